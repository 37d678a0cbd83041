"""Where a queued task stands: its ``queue_position`` and the reason it waits (``wait_reason``), and the workers'
heartbeats by kind that tell whether anyone serves its queue.

``queue_position`` is read from ``Keys.queue(kind)``: every queued task of that kind, of every tenant, scored by
:func:`queue_score` (priority first, then ``created_at``: the order the broker serves them), kept by the same
writes that move a task's status (``common.lua`` ``move_status``; ``create_many`` at submit). Its rank is one
ZRANK, O(log n). Position 1 is the next task a free worker of that kind takes. It is approximate: a task handed
back or requeued goes to the front of its priority on the broker but keeps its place here, and tasks whose
worker is being chosen are still counted. Tasks deferred by their tenant's running limit are out of the queue
(they wait for their tenant, not for the queue): no position.

``wait_reason``, first that applies: "tenant max_running reached" (it is in its tenant's deferred list), "no worker
for kind <kind>" (no worker of that kind has beaten its heart within ``3 x reaper_interval``), "rate limited" (its
model's provider limit is full or blocked right now), "queued behind N tasks" (N = position - 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import redis

from shared.models import registry
from shared.settings import Settings
from shared.states import Status
from shared.store.keys import Keys
from shared.store.ratelimits import ProviderLimits
from shared.task import Task

QUEUE_BANDS = {"high": 1e10, "normal": 2e10, "low": 3e10}
"""Score bands of the priorities in ``Keys.queue`` (``common.lua`` has the same table)."""
REASONS = ("tenant max_running reached", "no worker for kind", "rate limited", "queued behind")
"""How every ``wait_reason`` starts (the list's ``wait_reason`` filter matches these prefixes)."""


def queue_score(priority: str, created_at: float) -> float:
    """A queued task's score in its kind's queue: its priority's band plus ``created_at`` (epoch seconds)."""
    return QUEUE_BANDS.get(priority, QUEUE_BANDS["normal"]) + created_at


class QueueInfo:
    """Queue positions, wait reasons and worker heartbeats. Reached as ``TaskStore.queue``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: ``reaper_interval`` (heartbeats), the model registry (rate limits).
        limits: the store's provider limits.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, limits: ProviderLimits):
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._limits = limits

    @property
    def heartbeat_ttl_ms(self) -> int:
        """How long a heartbeat counts: three reaper intervals."""
        return int(self._settings.reaper_interval * 3000)

    def heartbeat(self, kinds: Iterable[str], worker_id: str) -> None:
        """Say that ``worker_id`` serves ``kinds`` (every worker's reaper thread, each round)."""
        pipe = self._redis.pipeline(transaction=False)
        for kind in kinds:
            pipe.set(self._keys.alive(kind), worker_id, px=self.heartbeat_ttl_ms)
        pipe.execute()

    def depth(self, kind: str) -> int:
        """Queued tasks of ``kind`` waiting for a worker (deferred ones left out)."""
        return int(cast(int, self._redis.zcard(self._keys.queue(kind))))

    def describe(self, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """``{"queue_position", "wait_reason"}`` of each task (both None unless it is queued); one pipelined round
        trip for the page, plus one per model with a provider limit."""
        out: list[dict[str, Any]] = [{"queue_position": None, "wait_reason": None} for _ in tasks]
        queued = [(i, t) for i, t in enumerate(tasks) if t.status == Status.QUEUED]
        if not queued:
            return out
        kinds = sorted({t.kind for _, t in queued})
        pipe = self._redis.pipeline(transaction=False)
        for _, task in queued:
            pipe.zrank(self._keys.queue(task.kind), task.task_id)
        for kind in kinds:
            pipe.exists(self._keys.alive(kind))
        replies = pipe.execute()
        ranks, alive = replies[:len(queued)], dict(zip(kinds, replies[len(queued):], strict=True))
        limited = self._limited_models({t.model for _, t in queued if not t.agent_type})
        for (i, task), rank in zip(queued, ranks, strict=True):
            if rank is None:
                if self._redis.lpos(self._keys.deferred(task.tenant), task.task_id) is not None:
                    out[i]["wait_reason"] = REASONS[0]
                    continue
            else:
                out[i]["queue_position"] = int(rank) + 1
            if not alive[task.kind]:
                out[i]["wait_reason"] = f"no worker for kind {task.kind}"
            elif not task.agent_type and limited.get(task.model):
                out[i]["wait_reason"] = "rate limited"
            elif rank is not None:
                out[i]["wait_reason"] = f"queued behind {int(rank)} tasks"
        return out

    def _limited(self, model: str) -> bool:
        try:
            spec = registry(self._settings).resolve(model)
        except ValueError:
            return False
        return spec is not None and self._limits.limited(spec.limit())

    def _limited_models(self, models: Iterable[str]) -> dict[str, bool]:
        return {model: self._limited(model) for model in models}
