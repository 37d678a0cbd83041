"""The fleet-wide figures behind the API's ``GET /metrics`` (``api/metrics.py``), kept in Redis by the writes that
make them, so one scrape of any API process shows the whole fleet (as celery-exporter reads the broker).

Counters live in one hash, ``Keys.metrics``: each field is a counter's name and its label values joined by
:data:`SEP`, its value the count. They are bumped inside the same atomic writes as what they count: ``submitted`` by
``TaskStore.create_many`` (the submit's MULTI/EXEC), ``started`` and ``ended`` by ``common.lua``'s ``move_status``
(every status change goes through it), ``requeues`` by ``requeue.lua``, ``model_*`` by ``spend.lua`` (as each model
call returns), ``webhooks`` with each recorded delivery attempt. Gauges (queue depth per kind and priority, tasks
queued / running / paused per tenant, the outboxes) are read from the indexes the store keeps anyway.

Label values are bounded: kinds, priorities, statuses and outcomes are fixed sets, tenants come from the
operator's key table, models from the model registry. Never a task id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from shared.states import Status
from shared.store.keys import Keys
from shared.store.queueinfo import QUEUE_BANDS
from shared.task import KINDS

SEP = "\x1f"
"""Joins a counter's name and its label values in a field of ``Keys.metrics`` (``common.lua``'s ``count``)."""

COUNTERS: dict[str, tuple[str, ...]] = {
    "submitted": ("kind", "priority", "tenant"),
    "started": ("kind", "priority", "tenant"),
    "ended": ("kind", "priority", "tenant", "status"),
    "requeues": ("mode", "outcome"),
    "webhooks": ("outcome",),
    "model_calls": ("model", "tenant"),
    "model_tokens": ("model", "tenant", "direction"),
    "model_cost_usd": ("model", "tenant"),
}
"""Every counter of ``Keys.metrics`` and the names of its labels, in the order its fields hold their values."""

NOW_STATUSES = (Status.QUEUED, Status.RUNNING, Status.PAUSED)
"""The statuses counted as "tasks by status now" (ended tasks are the ``ended`` counter)."""


def metric_field(name: str, *labels: str) -> str:
    """The field of ``Keys.metrics`` holding counter ``name`` at ``labels`` (values in :data:`COUNTERS` order)."""
    return SEP.join((name, *labels))


def webhook_outcome(attempt: Mapping[str, Any]) -> str:
    """A webhook delivery attempt's outcome: "delivered" (a 2xx), "refused" (its URL was not allowed: not sent) or
    "failed" (an error or another status; retried with backoff until ``webhook_max_attempts``)."""
    if attempt.get("ok"):
        return "delivered"
    return "refused" if str(attempt.get("error") or "").startswith("refused") else "failed"


@dataclass
class FleetSnapshot:
    """The fleet's figures at one moment.

    counters: counter name -> ``{label values (COUNTERS order): value}``. queue_depth: ``(kind, priority)`` ->
    queued tasks waiting for a worker (deferred ones left out). tasks_now: ``(tenant, status)`` -> tasks in that
    status now (:data:`NOW_STATUSES`). dispatch_due: run messages due and not sent yet (the outbox).
    deliveries_due: webhook deliveries waiting in their outbox. leases: tasks held by a worker. workers_alive:
    kind -> whether a worker of that kind beat its heart lately.
    """

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    queue_depth: dict[tuple[str, str], int] = field(default_factory=dict)
    tasks_now: dict[tuple[str, str], int] = field(default_factory=dict)
    dispatch_due: int = 0
    deliveries_due: int = 0
    leases: int = 0
    workers_alive: dict[str, bool] = field(default_factory=dict)


_BANDS = sorted(QUEUE_BANDS.items(), key=lambda item: item[1])  # (priority, lowest score): high, normal, low


class FleetMetrics:
    """Reads the fleet-wide figures. Reached as ``TaskStore.metrics``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
    """

    def __init__(self, client: redis.Redis, keys: Keys):
        self._redis = client
        self._keys = keys

    def snapshot(self) -> FleetSnapshot:
        """Every figure, in two pipelined round trips (the second counts the tenants' tasks found in the first).

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        keys = self._keys
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.metrics)
        self._count_queued(pipe)
        for kind in KINDS:
            pipe.exists(keys.alive(kind))
        pipe.zcard(keys.dispatch)
        pipe.zcard(keys.deliveries)
        pipe.zcard(keys.leases)
        replies = pipe.execute()
        out = FleetSnapshot(counters={name: {} for name in COUNTERS})
        tenants: set[str] = set()
        for raw_field, raw_value in cast(dict[bytes, bytes], replies[0]).items():
            name, *labels = raw_field.decode().split(SEP)
            if name not in COUNTERS or len(labels) != len(COUNTERS[name]):
                continue
            out.counters[name][tuple(labels)] = float(raw_value)
            if "tenant" in COUNTERS[name]:
                tenants.add(labels[COUNTERS[name].index("tenant")])
        n = 1 + len(KINDS) * len(QUEUE_BANDS)
        out.queue_depth = self._queued(replies[1:n])
        for kind in KINDS:
            out.workers_alive[kind] = bool(replies[n])
            n += 1
        out.dispatch_due, out.deliveries_due, out.leases = (int(r) for r in replies[n:n + 3])
        ordered = sorted(tenants)
        if ordered:
            pipe = self._redis.pipeline(transaction=False)
            for tenant in ordered:
                for status in NOW_STATUSES:
                    pipe.zcard(keys.index(tenant, "status", str(status)))
            counts = iter(pipe.execute())
            for tenant in ordered:
                for status in NOW_STATUSES:
                    out.tasks_now[(tenant, str(status))] = int(next(counts))
        return out

    def queue_depth(self) -> dict[tuple[str, str], int]:
        """Queued tasks waiting for a worker (deferred ones left out), by ``(kind, priority)``, every kind and
        priority present; one pipelined round trip. ``lodestar flower`` shows it as a row per priority.

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        pipe = self._redis.pipeline(transaction=False)
        self._count_queued(pipe)
        return self._queued(pipe.execute())

    def _count_queued(self, pipe: Any) -> None:
        """Queue ``len(KINDS) * len(QUEUE_BANDS)`` ZCOUNTs on ``pipe``: each kind's queue, band by band."""
        for kind in KINDS:
            for _, low in _BANDS:
                pipe.zcount(self._keys.queue(kind), low, f"({low + 1e10}")

    @staticmethod
    def _queued(replies: list[Any]) -> dict[tuple[str, str], int]:
        counts = iter(replies)
        return {(kind, priority): int(next(counts)) for kind in KINDS for priority, _ in _BANDS}
