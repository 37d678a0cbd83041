"""``TaskStore``: the one door to Redis for task state, shared by every API replica and worker.

Records are :class:`shared.task.Task` objects (their encoding lives in ``shared/task.py``); key names come from
``shared/store/keys.py``; status changes are the Lua scripts of ``shared/store/lua/``, which check
:data:`shared.states.TRANSITIONS`, write the fields, append the event and publish the control notice in one atomic
round trip. Listing, submitting and tenants are in the package's other modules, reached through this class.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.client import PubSub

from shared.settings import Settings
from shared.states import EXIT_STATUS, ExitCode, Status, sources
from shared.store import listing, submit
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from shared.store.tenants import Tenants
from shared.task import Task, encode_fields


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of a guarded write. ``found`` False: no such task. ``ok`` False: its status (``status``) refused it.
    ``seq``: the seq of the event written (0: none). ``replayed``: nothing was written because the same write
    was made before (a message's idempotency key seen again); ``ok`` is True and ``seq`` is the first write's."""

    found: bool
    ok: bool
    status: str | None
    seq: int = 0
    replayed: bool = False

    @classmethod
    def from_reply(cls, reply: list[Any]) -> ApplyResult:
        """From a script's ``{found (1 | 0 refused | -1 missing | 2 replayed), status, seq}``."""
        found, status, seq = reply
        return cls(found != -1, found in (1, 2), status.decode() if status else None, int(seq), found == 2)


def new_id(prefix: str) -> str:
    """A fresh id: ``prefix`` + "_" + 22 URL-safe characters (128 random bits, ``secrets.token_urlsafe``).

    Shorter than a hex UUID on purpose: an id is stored about ten times per queued task (record key, list
    indexes, the Celery message), and at 27 characters each copy fits a smaller allocation (docs/performance.md).
    """
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def new_task_id() -> str:
    """A fresh task id: "task_" + 22 URL-safe characters (:func:`new_id`)."""
    return new_id("task")


def now() -> float:
    """Wall-clock time in epoch seconds (the unit of every stored timestamp)."""
    return time.time()


class TaskStore:
    """All Redis access for task state. Thread-safe (redis-py's pool); one instance per process is enough.

    Args:
        client: a redis-py client with ``decode_responses=False`` (screenshots are bytes).
        settings: key prefix, TTLs, stream length, lease and attempt limits.

    Attributes:
        keys: the key names (``shared/store/keys.py``).
        tenants: stored API keys and tenant settings (``shared/store/tenants.py``).
        redis: the client itself, for tests and operators' tools; application code goes through the methods.
    """

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.tenants = Tenants(client, self.keys, settings)
        self._scripts = Scripts.register(client)

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskStore:
        """A store on ``settings.redis_url`` with its own blocking connection pool of
        ``settings.redis_max_connections`` (redis-py's default pool fails past 100 connections)."""
        pool = redis.BlockingConnectionPool.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                                                     timeout=30, health_check_interval=30)
        return cls(redis.Redis(connection_pool=pool), settings)

    def ping(self) -> None:
        """Raises ``redis.RedisError`` unless Redis answers."""
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()

    def url_signing_key(self) -> bytes:
        """The deployment's generated URL signing key (64 hex characters, ``shared/signing.py``): the first caller
        creates it (SET NX, no expiry), every process reads the same one after."""
        key = self.keys.url_signing_key
        self.redis.set(key, secrets.token_hex(32), nx=True)
        return cast(bytes, self.redis.get(key))

    # -- records ---------------------------------------------------------------------------------------------------
    def create(self, task: Task) -> None:
        """Write a new task, its list indexes and its first event, in one MULTI/EXEC (see :meth:`create_many`)."""
        pipe = self.redis.pipeline(transaction=True)
        self.create_many(pipe, [task])
        pipe.execute()

    def create_many(self, pipe: redis.client.Pipeline, tasks: Sequence[Task]) -> None:
        """Buffer in ``pipe`` the commands that write new tasks: one HSET each, and one ZADD per index for all of
        them (a batch of 1000 tasks is ~1000 commands, not ~4000).

        A task's first event (seq 1) is the status event of its initial status at ``created_at``: it is derived
        from the record by :meth:`read_events`, and the event stream is created by the second event (a Redis
        Stream costs ~4.7 KB even with one entry, more than the rest of a queued task).
        """
        indexes: dict[str, dict[str, float]] = {}
        for task in tasks:
            fields = {**task.to_redis(), "event_seq": "1"}
            if task.status != Status.QUEUED:
                fields["first_status"] = str(task.status)
            pipe.hset(self.keys.task(task.task_id), mapping=fields)  # type: ignore[arg-type]
            for index in self._indexes_of(task):
                indexes.setdefault(index, {})[task.task_id] = task.created_at
        for index, members in indexes.items():
            pipe.zadd(index, members)

    def _indexes_of(self, task: Task) -> list[str]:
        """Every list index a new task belongs to (``shared/store/listing.py``)."""
        index = self.keys.index
        out = [index(task.tenant, "status", str(task.status))]
        out += [index(task.tenant, "meta", f"{k}={v}") for k, v in task.metadata.items()]
        if task.batch_id:
            out.append(index(task.tenant, "batch", task.batch_id))
        return out

    def get(self, task_id: str) -> Task | None:
        """The task, or None when no such task exists (or it expired)."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.keys.task(task_id)))
        return Task.from_redis(task_id, raw) if raw else None

    def status(self, task_id: str) -> Status | None:
        """The task's status, or None when it does not exist (or expired). One HGET."""
        raw = cast(bytes | None, self.redis.hget(self.keys.task(task_id), "status"))
        return Status(raw.decode()) if raw else None

    # -- submitting and listing --------------------------------------------------------------------------------------
    def claim_idempotency_keys(self, tasks: Sequence[Task]) -> list[Task | submit.InProgress | None]:
        """See :func:`shared.store.submit.claim_idempotency_keys` (window: ``settings.idempotency_window``)."""
        return submit.claim_idempotency_keys(self.redis, self.keys, tasks, self.settings.idempotency_window,
                                             self.get)

    def submit(self, tasks: Sequence[Task], messages: submit.Messages) -> int:
        """Store and enqueue new tasks atomically per chunk; returns how many were (a prefix of ``tasks``). See
        :func:`shared.store.submit.submit`."""
        return submit.submit(self.redis, self.keys, tasks, messages, self.create_many)

    def list_tasks(self, tenant: str, filters: listing.TaskFilter, limit: int,
                   cursor: str | None = None) -> tuple[list[Task], str | None]:
        """A page of the tenant's tasks, newest first, and the next page's cursor. See
        :func:`shared.store.listing.list_tasks` (raises ValueError for a malformed cursor)."""
        return listing.list_tasks(self.redis, self.keys, tenant, filters, limit, cursor)

    def batch_counts(self, tenant: str, batch_id: str) -> dict[str, Any] | None:
        """Counts of a batch's tasks by status (:func:`shared.store.listing.batch_counts`); None: no such batch."""
        return listing.batch_counts(self.redis, self.keys, tenant, batch_id)

    def count(self, tenant: str, status: Status | str) -> int:
        """How many of ``tenant``'s tasks have ``status`` (O(1))."""
        return int(cast(int, self.redis.zcard(self.keys.index(tenant, "status", str(status)))))

    def next_deferred(self, tenant: str) -> list[str]:
        """Pop the deferred task ids of ``tenant`` that now fit under its running limit and are still queued
        (oldest first; cancelled ones are dropped). The caller enqueues each and gives back, with
        :meth:`return_deferred`, any it could not enqueue."""
        ids = self._scripts.next_deferred(args=[self.keys.prefix, tenant, self.settings.default_max_running])
        return [i.decode() for i in ids]

    def return_deferred(self, tenant: str, task_ids: list[str]) -> None:
        """Put ids back at the front of the tenant's deferred list, in their order."""
        if task_ids:
            self.redis.lpush(self.keys.deferred(tenant), *reversed(task_ids))

    # -- guarded writes ----------------------------------------------------------------------------------------------
    def apply(
        self,
        task_id: str,
        *,
        allowed_from: Iterable[Status | str] | None = None,
        fields: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
        expire: int = 0,
        notice: str | None = None,
    ) -> ApplyResult:
        """Atomically: check the status is in ``allowed_from`` (None: any), set ``fields`` (names of
        :class:`~shared.task.Task` fields), append ``event``, expire the task's keys after ``expire`` seconds (0:
        keep), and publish control ``notice`` (a command name).

        Raises:
            KeyError: a field that is not a stored field of Task.
        """
        args = self._apply_args(task_id, allowed_from, fields, event, expire, notice)
        return ApplyResult.from_reply(self._scripts.apply(keys=self.keys.task_keys(task_id), args=args))

    def _apply_args(self, task_id: str, allowed_from: Iterable[Status | str] | None,
                    fields: Mapping[str, Any] | None, event: Mapping[str, Any] | None, expire: int,
                    notice: str | None) -> list[Any]:
        args: list[Any] = [
            # None: any status; an empty set: none ("-" matches no status)
            (",".join(str(s) for s in allowed_from) or "-") if allowed_from is not None else "",
            json.dumps(event) if event else "",
            self.settings.event_stream_maxlen,
            expire,
            self.keys.control(task_id) if notice else "",
            json.dumps({"command": notice, "task_id": task_id}) if notice else "",
            self.keys.prefix,
        ]
        for name, value in encode_fields(fields or {}).items():
            args += [name, value]
        return args

    def transition(
        self, task_id: str, to: Status, fields: Mapping[str, Any] | None = None, notice: str | None = None,
        only_from: Iterable[Status] | None = None, **event: Any,
    ) -> ApplyResult:
        """Move the task to ``to`` if the transition table allows it from its current status (and, with
        ``only_from``, if that status is one of them), with a status event carrying ``event``'s extra keys."""
        allowed = sources(to) if only_from is None else sources(to) & frozenset(only_from)
        body = {"type": "status", "status": str(to), "task_id": task_id, "ts": now(), **event}
        return self.apply(task_id, allowed_from=allowed, fields={**(fields or {}), "status": to},
                          event=body, notice=notice)

    def finish(
        self, task_id: str, code: ExitCode, *, result: str | None = None, error: str | None = None,
        fields: Mapping[str, Any] | None = None, notice: str | None = None,
    ) -> ApplyResult:
        """End the task: terminal status for ``code``, ``exit_code``, ``finished_at``, the ``end`` event, and the
        retention TTL on all its keys. Refused (ok False) if the task already ended."""
        status = EXIT_STATUS[code]
        ts = now()
        event = {"type": "end", "task_id": task_id, "status": str(status), "exit_code": int(code),
                 "result": result, "error": error, "ts": ts}
        all_fields = {**(fields or {}), "status": status, "exit_code": int(code), "finished_at": ts,
                      "result": result, "error": error}
        return self.apply(task_id, allowed_from=sources(status), fields=all_fields, event=event,
                          expire=self.settings.task_retention, notice=notice)

    def inject(self, task_id: str, content: str, idempotency_key: str | None = None) -> ApplyResult:
        """Queue a user message for the agent (kept in the inbox until the worker delivers it), log a ``message``
        event and notify the worker. Refused unless the task is queued, running or paused.

        With ``idempotency_key``, a second call with the same key for the same task writes nothing and answers
        ``ok`` and ``replayed`` (with the first message's event ``seq``) whatever the task's status now: the key
        is kept in the task's record, so it lives as long as the task."""
        ts = now()
        event = {"type": "message", "task_id": task_id, "role": "user", "content": content, "ts": ts}
        keys = self.keys
        return ApplyResult.from_reply(self._scripts.inject(
            keys=[keys.task(task_id), keys.events(task_id), keys.inbox(task_id)],
            args=["queued,running,paused", json.dumps({"content": content, "ts": ts}), json.dumps(event),
                  self.settings.event_stream_maxlen, keys.control(task_id),
                  json.dumps({"command": "message", "task_id": task_id}),
                  keys.message_key_field(idempotency_key) if idempotency_key else ""]))

    def record_step(self, task_id: str, step: int, jpeg: bytes, fields: Mapping[str, Any],
                    event: Mapping[str, Any], usage: Mapping[str, Any] | None = None) -> ApplyResult:
        """A worker's step: store the screenshot, then (if the task is still running or paused) set ``fields`` and
        append ``event``, in one round trip. ``usage`` (this step's model usage: ``input_tokens``,
        ``output_tokens``, ``total_tokens``, ``calls``, ``cost_usd``) is added to the task's running sums
        (``usage`` and ``cost``; read-modify-write is safe: one worker holds the task). ``ok`` False: the task
        ended under the worker."""
        fields = {**fields, **self._usage_after(task_id, usage)} if usage is not None else fields
        shots = self.keys.shots(task_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(shots, str(step), jpeg)
        pipe.expire(shots, self.settings.screenshot_ttl)
        args = self._apply_args(task_id, (Status.RUNNING, Status.PAUSED), fields, event, 0, None)
        self._scripts.apply(keys=self.keys.task_keys(task_id), args=args, client=pipe)
        return ApplyResult.from_reply(pipe.execute()[-1])

    def _usage_after(self, task_id: str, step_usage: Mapping[str, Any]) -> dict[str, Any]:
        """The ``usage`` and ``cost`` fields after adding one step's usage (``cost`` stays None while no step had
        a price)."""
        raw = cast(list[bytes | None], self.redis.hmget(self.keys.task(task_id), ["usage", "cost"]))
        total = json.loads(raw[0]) if raw[0] else {}
        for name in ("input_tokens", "output_tokens", "total_tokens", "calls"):
            total[name] = int(total.get(name) or 0) + int(step_usage.get(name) or 0)
        cost = float(raw[1]) if raw[1] else None
        if step_usage.get("cost_usd") is not None:
            cost = round((cost or 0.0) + float(step_usage["cost_usd"]), 8)
        return {"usage": total, "cost": cost}

    # -- events ----------------------------------------------------------------------------------------------------
    def append_event(self, task_id: str, event: Mapping[str, Any], fields: Mapping[str, Any] | None = None) -> int:
        """Append ``event`` (and set ``fields``) whatever the status; returns its seq (0 if the task is gone)."""
        return self.apply(task_id, fields=fields, event={"task_id": task_id, "ts": now(), **event}).seq

    def last_seq(self, task_id: str) -> int:
        """The seq of the task's latest event (0 when the task does not exist)."""
        raw = cast(bytes | None, self.redis.hget(self.keys.task(task_id), "event_seq"))
        return int(raw) if raw else 0

    def read_events(self, task_id: str, after: int = 0, block_ms: int | None = None,
                    count: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Events with seq > ``after``, oldest first, as ``(seq, event)``; blocks up to ``block_ms`` for new ones."""
        out: list[tuple[int, dict[str, Any]]] = []
        if after < 1:
            first_status, created_at = cast(list[bytes | None], self.redis.hmget(
                self.keys.task(task_id), ["first_status", "created_at"]))
            if created_at is not None:
                status = (first_status or b"queued").decode()
                out.append((1, {"type": "status", "status": status, "task_id": task_id, "ts": float(created_at)}))
                after, block_ms = 1, None  # we have something to return: do not block for more
        reply = cast(list[Any], self.redis.xread({self.keys.events(task_id): f"0-{after}"}, count=count,
                                                  block=block_ms))
        for _stream, entries in reply or []:
            for entry_id, data in entries:
                seq = int(entry_id.split(b"-")[1])
                out.append((seq, json.loads(data[b"data"])))
        return out

    def pubsub(self, ignore_subscribe_messages: bool = False) -> PubSub:
        """A pub/sub connection of the store's pool (event streams, control notices, the ``ended`` channel)."""
        return self.redis.pubsub(ignore_subscribe_messages=ignore_subscribe_messages)

    def publish(self, channel: str, message: str) -> None:
        """Publish ``message`` on ``channel`` (a name from :attr:`keys`)."""
        self.redis.publish(channel, message)

    # -- screenshots and inbox ---------------------------------------------------------------------------------------
    def put_screenshot(self, task_id: str, step: int, jpeg: bytes) -> None:
        """Store a step's JPEG for ``settings.screenshot_ttl`` (the task's retention once it ends)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.shots(task_id), str(step), jpeg)
        pipe.expire(self.keys.shots(task_id), self.settings.screenshot_ttl)
        pipe.execute()

    def get_screenshot(self, task_id: str, step: int) -> bytes | None:
        """A step's JPEG bytes, or None (no such step, or expired)."""
        return cast(bytes | None, self.redis.hget(self.keys.shots(task_id), str(step)))

    def inbox(self, task_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Injected messages from index ``start`` on, as ``{"content", "ts"}``."""
        raw = cast(list[bytes], self.redis.lrange(self.keys.inbox(task_id), start, -1))
        return [json.loads(m) for m in raw]

    def control_snapshot(self, task_id: str) -> tuple[str, int]:
        """What a worker's control channel reads: ``(status, messages delivered)`` ("" when the task is gone)."""
        status, delivered = cast(list[bytes | None], self.redis.hmget(
            self.keys.task(task_id), ["status", "messages_delivered"]))
        return (status or b"").decode(), int(delivered or 0)

    def set_delivered(self, task_id: str, delivered: int) -> None:
        """Record how many injected messages reached the policy (survives a worker restart)."""
        self.redis.hset(self.keys.task(task_id), "messages_delivered", delivered)

    # -- leases ------------------------------------------------------------------------------------------------------
    def claim(self, task_id: str, worker_id: str) -> tuple[str, str, int]:
        """Take the task for ``worker_id``: returns ``(outcome, status, attempt)``.

        outcome: "started" (queued -> running), "restarted" (its previous worker's lease expired), "leased"
        (another live worker holds it), "ended" (terminal already), "lost" (too many attempts), "missing",
        "deferred" (its tenant is at its running limit: the id waits in the tenant's deferred list until one of
        the tenant's tasks ends, see :meth:`next_deferred`).
        """
        keys = self.keys
        outcome, status, attempt = self._scripts.claim(
            keys=[keys.task(task_id), keys.events(task_id), keys.lease(task_id)],
            args=[worker_id, self.settings.lease_ttl * 1000, self.settings.max_attempts, now(),
                  self.settings.event_stream_maxlen, keys.prefix, self.settings.default_max_running],
        )
        return outcome.decode(), status.decode() if status else "", int(attempt)

    def renew_lease(self, task_id: str, worker_id: str) -> bool:
        """Extend ``worker_id``'s lease by ``lease_ttl``; False if it no longer holds it."""
        return bool(self._scripts.renew(keys=[self.keys.lease(task_id)],
                                        args=[worker_id, self.settings.lease_ttl * 1000]))

    def release_lease(self, task_id: str, worker_id: str) -> None:
        """Delete the lease if ``worker_id`` still holds it (compare-and-delete, one script)."""
        self._scripts.release(keys=[self.keys.lease(task_id)], args=[worker_id])

    # -- webhook records ---------------------------------------------------------------------------------------------
    def record_webhook_attempt(self, task_id: str, attempt: Mapping[str, Any], keep: int = 200) -> None:
        """Append one delivery attempt (JSON-ready) to the task's webhook log (the last ``keep`` are kept), with the
        task's own expiry."""
        key = self.keys.webhooks(task_id)
        ttl = cast(int, self.redis.ttl(self.keys.task(task_id)))
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(dict(attempt)))
        pipe.ltrim(key, -keep, -1)
        if ttl and ttl > 0:
            pipe.expire(key, ttl)
        pipe.execute()

    def webhook_attempts(self, task_id: str) -> list[dict[str, Any]]:
        """Every recorded delivery attempt of a task, oldest first."""
        return [json.loads(a) for a in cast(list[bytes], self.redis.lrange(self.keys.webhooks(task_id), 0, -1))]
