"""What keeps every task owned: requeueing tasks whose worker was lost or gave them back, resuming released
tasks, the dispatch outbox of run messages not sent yet, and the reaper's lock (``docs/reliability.md``).

A task in ``running`` or ``paused`` either has a live lease (``Keys.lease``, indexed by expiry in ``Keys.leases``)
or is found through that index by the reaper once the lease expired. A task that must be queued again goes back
to ``queued`` and into the dispatch outbox (``Keys.dispatch``) in the same atomic write; whoever requeued it
sends its run message at once, and the reaper sends any message still due (the sender died, the broker was down).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script

from shared.settings import Settings
from shared.store.ids import now, now_ms
from shared.store.keys import Keys
from shared.store.scripts import Scripts


def _now() -> tuple[float, int]:
    return now(), now_ms()


@dataclass(frozen=True)
class Requeue:
    """Outcome of :meth:`Recovery.requeue`: ``outcome`` is "requeued" (back to queued, run message due),
    "released" (paused with no worker), "exhausted" (lost on its last attempt: the caller ends it, exit code 6),
    "alive" (its lease was renewed meanwhile), "lost" (handback by a worker that does not hold it), "ended" or
    "missing"; ``attempt`` is the task's attempt count after the call."""

    outcome: str
    status: str
    attempt: int


class Recovery:
    """Requeues, resumes, the dispatch outbox and the reaper lock. Reached as ``TaskStore.recovery``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: ``max_attempts``, ``event_stream_maxlen``.
        scripts: the store's registered scripts.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, scripts: Scripts):
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._scripts = scripts

    def _run(self, script: Script, task_id: str, args: list[Any]) -> list[bytes | int]:
        keys = self._keys
        return cast(list[bytes | int], script(keys=[keys.task(task_id), keys.events(task_id), keys.lease(task_id)],
                                              args=args))

    def requeue(self, task_id: str, mode: str, reason: str, worker: str = "") -> Requeue:
        """Give a running or paused task back: a running one to ``queued`` (run message due in the outbox), a
        paused one stays paused with no worker ("released"). ``mode`` "lost" (the reaper: only when its lease
        expired; counts the attempt) or "handback" (by ``worker``, which must hold the lease: a shutdown or a
        pause timeout; the attempt is given back). ``reason`` goes in the status event and the task's message."""
        ts, ms = _now()
        outcome, status, attempt = self._run(self._scripts.requeue, task_id, [
            mode, worker, ts, ms, self._settings.event_stream_maxlen, self._keys.prefix, self._settings.max_attempts,
            reason])
        return Requeue(cast(bytes, outcome).decode(), cast(bytes, status).decode(), int(attempt))

    def resume(self, task_id: str) -> tuple[int, str, int, str]:
        """Resume a paused task: ``(found, status before, seq, outcome)`` with found 1 (done), 0 (its status
        refused it) or -1 (missing); outcome "resumed" (its worker continues) or "requeued" (no worker held it: it
        is queued again and its run message is due in the outbox)."""
        ts, ms = _now()
        keys = self._keys
        found, status, seq, outcome = self._run(self._scripts.resume, task_id, [
            ts, ms, self._settings.event_stream_maxlen, keys.prefix, keys.control(task_id),
            json.dumps({"command": "resume", "task_id": task_id, "ts": ts})])
        return int(found), cast(bytes, status).decode(), int(seq), cast(bytes, outcome).decode()

    # -- the reaper's queries ----------------------------------------------------------------------------------------
    def expired_leases(self, before_ms: int, limit: int = 200) -> list[str]:
        """Ids of tasks whose lease expired before ``before_ms`` (epoch ms) by the leases index, oldest first."""
        ids = cast(list[bytes], self._redis.zrangebyscore(self._keys.leases, "-inf", before_ms, start=0, num=limit))
        return [i.decode() for i in ids]

    def due_dispatch(self, before_ms: int, limit: int = 500) -> list[str]:
        """Ids of tasks whose run message was due before ``before_ms`` and is not known to be sent."""
        ids = cast(list[bytes], self._redis.zrangebyscore(self._keys.dispatch, "-inf", before_ms, start=0,
                                                           num=limit))
        return [i.decode() for i in ids]

    def redispatch(self, task_id: str) -> bool:
        """Put a queued task back in the dispatch outbox (a worker that took its message but could not run it:
        the claim's writes were lost with a Redis crash). False when the task is not queued."""
        raw = cast(bytes | None, self._redis.hget(self._keys.task(task_id), "status"))
        if raw != b"queued":
            return False
        self._redis.zadd(self._keys.dispatch, {task_id: now_ms()})
        return True

    def dispatched(self, task_ids: list[str]) -> None:
        """Take ids out of the dispatch outbox: their run messages were sent (or they no longer need one)."""
        if task_ids:
            self._redis.zrem(self._keys.dispatch, *task_ids)

    def outbox_size(self) -> int:
        """Run messages due and not sent yet."""
        return int(cast(int, self._redis.zcard(self._keys.dispatch)))

    def deferring_tenants(self) -> list[str]:
        """Tenants with deferred tasks (waiting for their running limit)."""
        return sorted(t.decode() for t in cast(set[bytes], self._redis.smembers(self._keys.deferring)))

    def take_lock(self, owner: str, ttl_ms: int) -> bool:
        """Take or keep the reaper lock for ``owner`` for ``ttl_ms``; True while ``owner`` holds it."""
        return bool(self._scripts.lock(keys=[self._keys.reaper], args=[owner, ttl_ms]))

    def drop_lock(self, owner: str) -> None:
        """Let the reaper lock go if ``owner`` holds it (a worker shutting down)."""
        self._scripts.release(keys=[self._keys.reaper, self._keys.leases], args=[owner, ""])
