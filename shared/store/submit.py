"""Submitting tasks: idempotency keys, then the records, their index entries and their Celery messages in one
MULTI/EXEC per chunk, so a task is either stored and queued or neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import redis

from shared.store.keys import Keys
from shared.task import Task

log = logging.getLogger(__name__)

CHUNK = 1000
"""Tasks per MULTI/EXEC: big enough to amortise the round trip, small enough not to stall Redis (~10 ms)."""
IDEMPOTENCY_GRACE = 60.0
"""Seconds after a key is claimed during which a missing task means "being stored", not "expired"."""


class InProgress:
    """The answer for an idempotency key whose first request is still storing its task (a retry gets 409)."""


IN_PROGRESS = InProgress()


class Messages(Protocol):
    """Builds the broker message of a task (``shared.queue.RunTaskMessages``)."""

    def message(self, task_id: str, kind: str, priority: str) -> tuple[str, str]: ...


Write = Callable[[redis.client.Pipeline, Sequence[Task]], None]
"""Buffers the commands that create tasks in a pipeline (``TaskStore.create_many``)."""


def claim_idempotency_keys(client: redis.Redis, keys: Keys, tasks: Sequence[Task], window: int,
                           get: Callable[[str], Task | None]) -> list[Task | InProgress | None]:
    """For each task with an ``idempotency_key``: the task that key already created within ``window`` seconds,
    the earlier task of this same call with that key, :data:`IN_PROGRESS` when another request claimed the key
    less than :data:`IDEMPOTENCY_GRACE` s ago and has not stored its task yet, or None (the key is now this
    task's). A few pipelined round trips whatever the number of tasks.

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    found: list[Task | InProgress | None] = [None] * len(tasks)
    slots: dict[int, str] = {}
    first_with: dict[str, int] = {}
    duplicates: dict[int, int] = {}  # the same key twice in one batch: one task, the first item's
    for i, task in enumerate(tasks):
        if task.idempotency_key:
            slot = keys.idempotency(task.tenant, task.idempotency_key)
            if slot in first_with:
                duplicates[i] = first_with[slot]
            else:
                first_with[slot] = i
                slots[i] = slot
    if slots:
        pipe = client.pipeline(transaction=False)
        for i, slot in slots.items():
            pipe.set(slot, tasks[i].task_id, nx=True, ex=window)
        taken = [i for i, ok in zip(slots, pipe.execute(), strict=True) if not ok]
        if taken:
            pipe = client.pipeline(transaction=False)
            for i in taken:
                pipe.get(slots[i])
                pipe.pttl(slots[i])
            answers = pipe.execute()
            for n, i in enumerate(taken):
                existing, ttl_ms = cast(bytes | None, answers[2 * n]), cast(int, answers[2 * n + 1])
                earlier = get(existing.decode()) if existing else None
                if earlier is not None:
                    found[i] = earlier
                elif existing and ttl_ms > 0 and window - ttl_ms / 1000 < IDEMPOTENCY_GRACE:
                    found[i] = IN_PROGRESS  # claimed moments ago by a request that is still writing its task
                else:  # the task it named expired: the key is free again
                    client.set(slots[i], tasks[i].task_id, ex=window)
    for i, first in duplicates.items():
        found[i] = found[first] if found[first] is not None else tasks[first]
    return found


def submit(client: redis.Redis, keys: Keys, tasks: Sequence[Task], messages: Messages | None, write: Write,
           now_ms: int) -> int:
    """Store and enqueue new tasks; returns how many were (a prefix of ``tasks``).

    Each chunk of :data:`CHUNK` tasks, their index entries and their Celery messages go in one MULTI/EXEC; without
    ``messages`` (the broker is not this Redis) each task goes in the dispatch outbox instead, due ``now_ms``, for
    the caller to send (``shared.queue.Dispatcher``). When
    Redis fails midway, the chunks already written stay accepted, the rest are not stored and their idempotency
    keys are released (a retry creates them). A chunk whose EXEC may have run with its reply lost is looked up:
    found, it counts as stored; when Redis cannot even be asked, the keys stay claimed (a retry gets 409 for
    :data:`IDEMPOTENCY_GRACE` s, then the key is free), so a lost reply never turns a retry into a second task.
    Never raises for Redis errors (the count tells).
    """
    done = 0
    for start in range(0, len(tasks), CHUNK):
        chunk = tasks[start:start + CHUNK]
        try:
            pipe = client.pipeline(transaction=True)
            write(pipe, chunk)
            if messages is None:
                pipe.zadd(keys.dispatch, {task.task_id: now_ms for task in chunk})
            else:
                queues: dict[str, list[str]] = {}
                for task in chunk:
                    key, message = messages.message(task.task_id, task.kind, task.priority)
                    queues.setdefault(key, []).append(message)
                for key, queued in queues.items():
                    pipe.lpush(key, *queued)  # in order: the worker pops from the other end (FIFO)
            pipe.execute()
        except Exception:
            log.exception("storing and queueing %d tasks failed", len(tasks) - done)
            try:
                if client.exists(keys.task(chunk[0].task_id)):  # EXEC ran; only its reply was lost
                    done += len(chunk)
                    continue
                slots = [keys.idempotency(t.tenant, t.idempotency_key) for t in tasks[done:] if t.idempotency_key]
                if slots:  # not stored: a retry with the same key must create the task
                    client.delete(*slots)
            except redis.RedisError:
                pass  # unknown: the keys stay claimed (see above)
            return done
        done += len(chunk)
        if done < len(tasks):
            time.sleep(0)  # a big batch lets the other requests of this process run between chunks (gevent)
    return done
