"""What model calls cost, as they happen, and the budgets they count against: a task's ``max_cost_usd`` (on its
record), a batch's ``max_cost_usd`` (``Keys.batch``) and a tenant's daily budget (``Keys.spent``, per UTC day).

A worker records each call when it returns (:meth:`Budgets.spend`, one Lua call that also adds it to the batch's
and the day's sums) and reads the three before the next call (:meth:`Budgets.state`). The check and the spending
are not one atomic step: tasks of one batch (or tenant) running at once may each make one call past the budget
between them. Costs are known only for models with a price (``LODESTAR_MODEL_PRICES``); offline agents cost 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from shared.task import DEFAULT_MODEL, Task

DAY_TTL = 2 * 24 * 3600
"""Seconds a tenant's spending of a day is kept (today's is what counts; yesterday's is kept for operators)."""


def utc_day(ts: float | None = None) -> str:
    """The UTC day of epoch seconds ``ts`` (default now) as "YYYY-MM-DD"."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if ts is None else ts))


def seconds_to_next_day(ts: float | None = None) -> int:
    """Whole seconds until the next UTC midnight (at least 1)."""
    now = time.time() if ts is None else ts
    return max(1, int(86400 - now % 86400))


def _float(raw: Any) -> float | None:
    return float(raw) if raw not in (None, b"", "") else None


@dataclass(frozen=True)
class BudgetState:
    """What a task may still spend: its own cost so far and ``max_cost_usd``; its batch's spending and budget
    (None: the batch has none); its tenant's spending today and daily budget (0: none). USD throughout."""

    task_spent: float
    task_max: float | None
    batch_spent: float
    batch_max: float | None
    day_spent: float
    day_max: float

    def exceeded_by(self, next_call: float, batch_id: str | None = None) -> str | None:
        """Which budget a next call costing ``next_call`` USD would go over, worded for the task's ``error``
        (None: none)."""
        if self.task_max is not None and self.task_spent + next_call > self.task_max:
            return (f"max_cost_usd reached: the task spent ${self.task_spent:.6g} of ${self.task_max:.6g} and its "
                    f"next model call would cost about ${next_call:.6g}")
        if self.batch_max is not None and self.batch_spent + next_call > self.batch_max:
            return (f"the batch's max_cost_usd reached: batch {batch_id} spent ${self.batch_spent:.6g} of "
                    f"${self.batch_max:.6g} and the next model call would cost about ${next_call:.6g}")
        if self.day_max > 0 and self.day_spent + next_call > self.day_max:
            return (f"the tenant's daily budget reached: ${self.day_spent:.6g} of ${self.day_max:.6g} spent today "
                    f"(UTC) and the next model call would cost about ${next_call:.6g}")
        return None


class Budgets:
    """Spending and budgets. Reached as ``TaskStore.budgets``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: ``default_daily_budget_usd``, ``task_retention``, ``max_duration_limit``.
        scripts: the store's registered scripts.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, scripts: Scripts):
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._scripts = scripts

    @property
    def _batch_ttl(self) -> int:
        return self._settings.task_retention + self._settings.max_duration_limit

    def set_batch_budget(self, batch_id: str, max_cost_usd: float) -> None:
        """Give a new batch a budget of ``max_cost_usd`` USD (its spending starts at 0)."""
        key = self._keys.batch(batch_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"max_cost_usd": repr(float(max_cost_usd)), "spent": "0"})
        pipe.expire(key, self._batch_ttl)
        pipe.execute()

    def batch_budget(self, batch_id: str) -> dict[str, float] | None:
        """``{"max_cost_usd", "spent_usd"}`` of a batch with a budget, else None."""
        raw = cast(list[bytes | None], self._redis.hmget(self._keys.batch(batch_id), ["max_cost_usd", "spent"]))
        if raw[0] is None:
            return None
        return {"max_cost_usd": float(raw[0]), "spent_usd": round(float(raw[1] or 0), 8)}

    def day_spent(self, tenant: str, day: str | None = None) -> float:
        """USD the tenant's model calls cost on UTC ``day`` (default today)."""
        return _float(self._redis.get(self._keys.spent(tenant, day or utc_day()))) or 0.0

    def state(self, task: Task) -> BudgetState:
        """The task's, its batch's and its tenant's spending and budgets, in one round trip."""
        keys = self._keys
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(keys.task(task.task_id), "cost")
        pipe.hmget(keys.batch(task.batch_id or ""), ["max_cost_usd", "spent"])
        pipe.hget(keys.tenant(task.tenant), "daily_budget_usd")
        pipe.get(keys.spent(task.tenant, utc_day()))
        cost, batch, daily, day = pipe.execute()
        budget = _float(daily)
        return BudgetState(
            task_spent=_float(cost) or 0.0, task_max=task.max_cost_usd,
            batch_spent=(_float(batch[1]) or 0.0) if task.batch_id else 0.0,
            batch_max=_float(batch[0]) if task.batch_id else None,
            day_spent=_float(day) or 0.0,
            day_max=budget if budget is not None else self._settings.default_daily_budget_usd)

    def spend(self, task_id: str, usage: dict[str, Any], holder: str | None = None) -> tuple[int, float | None]:
        """Record one model call as it returns: ``usage`` (``input_tokens``, ``output_tokens``, ``calls``,
        ``cost_usd``: USD or None without a price) is added to the task's ``usage`` and ``cost``, and its cost to
        the batch's and the tenant's day's spending; only if ``holder`` (when given) still holds the task's lease.
        Returns ``(found, the task's cost now)``: found 1, -1 (no such task) or -2 (the lease is not held: nothing
        was written)."""
        cost = usage.get("cost_usd")
        found, total, _batch, _day = self._scripts.spend(
            keys=[self._keys.task(task_id), self._keys.lease(task_id)],
            args=[holder or "", self._keys.prefix, int(usage.get("input_tokens") or 0),
                  int(usage.get("output_tokens") or 0), int(usage.get("calls") or 0),
                  "" if cost is None else repr(float(cost)), utc_day(), DAY_TTL, self._batch_ttl, DEFAULT_MODEL])
        return int(found), _float(total)
