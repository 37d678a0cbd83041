"""``TaskStore``: the one door to Redis for task state, shared by every API replica and worker.

Records are :class:`shared.task.Task` objects (their encoding lives in ``shared/task.py``); key names come from
``shared/store/keys.py``; status changes are the Lua scripts of ``shared/store/lua/``, which check
:data:`shared.states.TRANSITIONS`, write the fields, append the event and publish the control notice in one atomic
round trip. Listing, submitting and tenants are in the package's other modules, reached through this class.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.client import PubSub
from redis.retry import Retry

from shared.artifacts import ArtifactStore, screenshot_name
from shared.settings import Settings
from shared.states import EXIT_STATUS, ExitCode, Status, sources
from shared.store import listing, submit
from shared.store.artifacts import RedisArtifacts, open_artifacts
from shared.store.budgets import Budgets
from shared.store.deliveries import Deliveries, new_delivery_id
from shared.store.environments import Environments
from shared.store.ids import new_id, new_task_id, now, now_ms
from shared.store.keys import Keys
from shared.store.metrics import FleetMetrics, metric_field, webhook_outcome
from shared.store.queueinfo import QueueInfo, queue_score
from shared.store.ratelimits import ProviderLimits
from shared.store.recovery import Recovery
from shared.store.scripts import Scripts
from shared.store.takeover import Takeover
from shared.store.tenants import Tenants
from shared.task import Task, encode_fields

__all__ = ["ApplyResult", "LeaseLost", "TaskStore", "new_id", "new_task_id", "now", "now_ms"]


class LeaseLost(Exception):
    """A worker's write was refused because the worker no longer holds the task's lease (it was requeued after the
    lease expired, e.g. while the worker was cut off from Redis): the worker must stop acting on the task at once,
    close its environment and leave the task to whoever holds it now (fencing)."""


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of a guarded write. ``found`` False: no such task. ``ok`` False: its status (``status``) refused it,
    or (``lost`` True) the writing worker no longer holds its lease. ``seq``: the seq of the event written (0: none).
    ``replayed``: nothing was written because the same write was made before (a message's idempotency key seen
    again); ``ok`` is True and ``seq`` is the first write's.
    """

    found: bool
    ok: bool
    status: str | None
    seq: int = 0
    lost: bool = False
    delivery_id: str | None = None
    """The id of the end's webhook delivery, when the write ended a task that has a ``webhook_url``."""
    requeued: bool = False
    """A resume of a task no worker held: it went back to ``queued`` and its run message is due (``send_resume``)."""
    replayed: bool = False

    @classmethod
    def from_reply(cls, reply: list[Any], delivery_id: str | None = None) -> ApplyResult:
        """From a script's ``{found, status, seq[, delivery added]}``: found 1 (written), 0 (refused by the
        status), -1 (missing), -2 (the lease is not held), 2 (replayed)."""
        found, status, seq = reply[:3]
        added = len(reply) > 3 and reply[3] == 1
        return cls(found != -1, found in (1, 2), status.decode() if status else None, int(seq), lost=found == -2,
                   delivery_id=delivery_id if added else None, replayed=found == 2)


def _retries_for(seconds: float, base: float = 0.05, cap: float = 1.0) -> int:
    """How many retries of :meth:`TaskStore.from_settings`'s backoff add up to ``seconds`` (0 for 0)."""
    retries, waited, wait = 0, 0.0, base
    while waited < seconds:
        waited += wait
        wait = min(wait * 2, cap)
        retries += 1
    return retries


class TaskStore:
    """All Redis access for task state. Thread-safe (redis-py's pool); one instance per process is enough.

    Args:
        client: a redis-py client with ``decode_responses=False`` (screenshots are bytes).
        settings: key prefix, TTLs, stream length, lease and attempt limits.

    Attributes:
        keys: the key names (``shared/store/keys.py``).
        tenants: stored API keys and tenant settings (``shared/store/tenants.py``).
        recovery: requeues, resumes, the dispatch outbox, the reaper lock (``shared/store/recovery.py``).
        deliveries: the webhook outbox (``shared/store/deliveries.py``).
        budgets: what model calls cost and the budgets they count against (``shared/store/budgets.py``).
        limits: the model providers' rate limits (``shared/store/ratelimits.py``).
        queue: queue positions, wait reasons, workers' heartbeats (``shared/store/queueinfo.py``).
        metrics: the fleet-wide counters and gauges ``GET /metrics`` exports (``shared/store/metrics.py``).
        environments: saved environments of ``persistent`` tasks (``shared/store/environments.py``).
        takeover: human actions for the workers of paused tasks (``shared/store/takeover.py``).
        artifacts: the tasks' named binary artifacts (step screenshots): in Redis, or in S3 when
            ``settings.artifacts_url`` says so (``shared/artifacts.py``); ``artifacts`` (an ArtifactStore) replaces it.
        redis: the client itself, for tests and operators' tools; application code goes through the methods.
    """

    def __init__(self, client: redis.Redis, settings: Settings, artifacts: ArtifactStore | None = None):
        self.redis = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.tenants = Tenants(client, self.keys, settings)
        self._scripts = Scripts.register(client)
        self.recovery = Recovery(client, self.keys, settings, self._scripts)
        self.deliveries = Deliveries(client, self.keys, settings, self._scripts)
        self.budgets = Budgets(client, self.keys, settings, self._scripts)
        self.limits = ProviderLimits(client, self.keys, settings, self._scripts)
        self.queue = QueueInfo(client, self.keys, settings, self.limits)
        self.takeover = Takeover(client, self.keys, settings, self._scripts)
        self.artifacts = artifacts or open_artifacts(client, self.keys, settings)
        self.metrics = FleetMetrics(client, self.keys)
        self.environments = Environments(client, self.keys, settings, self._scripts, self.artifacts)

    @classmethod
    def from_settings(cls, settings: Settings, retry_seconds: float = 0.0) -> TaskStore:
        """A store on ``settings.redis_url`` with its own blocking connection pool of
        ``settings.redis_max_connections`` (redis-py's default pool fails past 100 connections).

        ``retry_seconds`` > 0: a command that meets a connection error (Redis restarting) is retried with backoff
        (0.05 s doubling up to 1 s) for about that long before the error is raised (workers; the API answers 503
        at once instead). Every write a worker repeats this way is idempotent: a step is not written twice, an end
        is refused the second time, a claim finds the task already held.
        """
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), _retries_for(retry_seconds))
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, timeout=30, health_check_interval=30,
            retry=retry, retry_on_error=[redis.ConnectionError, redis.TimeoutError])
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
        submitted: dict[str, int] = {}
        for task in tasks:
            field = metric_field("submitted", task.kind, task.priority, task.tenant)
            submitted[field] = submitted.get(field, 0) + 1
            fields = {**task.to_redis(), "event_seq": "1"}
            if task.status != Status.QUEUED:
                fields["first_status"] = str(task.status)
            else:  # its place in its kind's queue (shared/store/queueinfo.py)
                indexes.setdefault(self.keys.queue(task.kind), {})[task.task_id] = queue_score(task.priority,
                                                                                             task.created_at)
            pipe.hset(self.keys.task(task.task_id), mapping=fields)  # type: ignore[arg-type]
            for index in self._indexes_of(task):
                indexes.setdefault(index, {})[task.task_id] = task.created_at
        for index, members in indexes.items():
            pipe.zadd(index, members)
        for field, n in submitted.items():  # the fleet's counters (shared/store/metrics.py)
            pipe.hincrby(self.keys.metrics, field, n)

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

    def forget_idempotency_keys(self, tasks: Sequence[Task]) -> None:
        """Free the idempotency keys ``tasks`` claimed but were refused with (a retry may create them)."""
        slots = [self.keys.idempotency(t.tenant, t.idempotency_key) for t in tasks if t.idempotency_key]
        if slots:
            self.redis.delete(*slots)

    def submit(self, tasks: Sequence[Task], messages: submit.Messages | None) -> int:
        """Store new tasks with their run messages (or, without ``messages``, in the dispatch outbox) atomically per
        chunk; returns how many were stored (a prefix of ``tasks``). See :func:`shared.store.submit.submit`."""
        return submit.submit(self.redis, self.keys, tasks, messages, self.create_many, now_ms())

    def push_messages(self, messages: Sequence[tuple[str, str]], front: bool = False) -> None:
        """Push Celery messages ``(list key, message text)`` onto the Redis broker's lists (this store's Redis):
        behind the others of their list (LPUSH; the consumer pops the other end), or with ``front`` where they are
        popped next (RPUSH)."""
        pipe = self.redis.pipeline(transaction=False)
        for key, message in messages:
            (pipe.rpush if front else pipe.lpush)(key, message)
        pipe.execute()

    def list_tasks(self, tenant: str, filters: listing.TaskFilter, limit: int,
                   cursor: str | None = None) -> tuple[list[Task], str | None]:
        """A page of the tenant's tasks, newest first, and the next page's cursor. See
        :func:`shared.store.listing.list_tasks` (raises ValueError for a malformed cursor). A ``wait_reason``
        filter keeps the queued tasks whose reason (:meth:`QueueInfo.describe`) starts with it."""
        wanted = filters.wait_reason

        def waits_so(tasks: Sequence[Task]) -> list[bool]:
            return [(d["wait_reason"] or "").startswith(wanted or "") for d in self.queue.describe(tasks)]

        return listing.list_tasks(self.redis, self.keys, tenant, filters, limit, cursor,
                                  keep=waits_so if wanted else None)

    def batch_counts(self, tenant: str, batch_id: str) -> dict[str, Any] | None:
        """Counts of a batch's tasks by status (:func:`shared.store.listing.batch_counts`); None: no such batch."""
        return listing.batch_counts(self.redis, self.keys, tenant, batch_id)

    def count(self, tenant: str, status: Status | str) -> int:
        """How many of ``tenant``'s tasks have ``status`` (O(1))."""
        return int(cast(int, self.redis.zcard(self.keys.index(tenant, "status", str(status)))))

    def next_deferred(self, tenant: str) -> list[str]:
        """Pop the deferred task ids of ``tenant`` that now fit under its running limit and are still queued
        (oldest first; cancelled ones are dropped), each put in the dispatch outbox (its run message is due: the
        caller sends it, or the reaper does)."""
        ids = self._scripts.next_deferred(args=[self.keys.prefix, tenant, self.settings.default_max_running,
                                                now_ms()])
        return [i.decode() for i in ids]

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
        holder: str | None = None,
    ) -> ApplyResult:
        """Atomically: check the status is in ``allowed_from`` (None: any) and, when ``holder`` names a worker,
        that it still holds the task's lease (fencing: else ``lost``); set ``fields`` (names of
        :class:`~shared.task.Task` fields), append ``event``; when ``expire`` > 0 (the task ended): expire the
        task's keys after ``expire`` seconds, drop its lease and add its end's webhook delivery to the outbox; and
        publish control ``notice`` (a command name).

        Raises:
            KeyError: a field that is not a stored field of Task.
        """
        delivery_id = new_delivery_id() if expire else ""
        args = self._apply_args(task_id, allowed_from, fields, event, expire, notice, holder, delivery_id)
        return ApplyResult.from_reply(self._scripts.apply(keys=self.keys.task_keys(task_id), args=args),
                                      delivery_id or None)

    def _apply_args(self, task_id: str, allowed_from: Iterable[Status | str] | None,
                    fields: Mapping[str, Any] | None, event: Mapping[str, Any] | None, expire: int,
                    notice: str | None, holder: str | None = None, delivery_id: str = "") -> list[Any]:
        args: list[Any] = [
            # None: any status; an empty set: none ("-" matches no status)
            (",".join(str(s) for s in allowed_from) or "-") if allowed_from is not None else "",
            json.dumps(event) if event else "",
            self.settings.event_stream_maxlen,
            expire,
            self.keys.control(task_id) if notice else "",
            json.dumps({"command": notice, "task_id": task_id, "ts": now()}) if notice else "",
            self.keys.prefix,
            holder or "",
            delivery_id,
            now_ms(),
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
        fields: Mapping[str, Any] | None = None, notice: str | None = None, holder: str | None = None,
    ) -> ApplyResult:
        """End the task: terminal status for ``code``, ``exit_code``, ``finished_at``, the ``end`` event, the
        retention TTL on all its keys, its lease dropped, and (when it has a ``webhook_url``) the webhook delivery
        of its end in the outbox, all in one atomic write. Refused (ok False) if the task already ended, or
        (``lost``) when ``holder`` no longer holds its lease."""
        status = EXIT_STATUS[code]
        ts = now()
        event = {"type": "end", "task_id": task_id, "status": str(status), "exit_code": int(code),
                 "result": result, "error": error, "ts": ts}
        all_fields = {**(fields or {}), "status": status, "exit_code": int(code), "finished_at": ts,
                      "result": result, "error": error}
        return self.apply(task_id, allowed_from=sources(status), fields=all_fields, event=event,
                          expire=self.settings.task_retention, notice=notice, holder=holder)

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
                  json.dumps({"command": "message", "task_id": task_id, "ts": ts}),
                  keys.message_key_field(idempotency_key) if idempotency_key else ""]))

    def record_step(self, task_id: str, step: int, jpeg: bytes, fields: Mapping[str, Any],
                    event: Mapping[str, Any], holder: str | None = None,
                    extra: Sequence[tuple[str, bytes, str]] = ()) -> ApplyResult:
        """A worker's step: store the screenshot (artifact :func:`~shared.artifacts.screenshot_name`) and the
        ``extra`` artifacts (``(name, bytes, content type)``: the step's ARIA snapshot), then (if the
        task is still running or paused, and ``holder``, when given, still holds its lease) set ``fields`` and
        append ``event``: in one round trip with Redis artifacts; with S3 the object is written first, then the
        record, so a record never names a missing object (a step's model usage is on the record already: it is
        recorded as each call returns, ``Budgets.spend``). ``ok`` False: the task ended under the worker.

        Raises:
            LeaseLost: ``holder`` no longer holds the task's lease (the step is not recorded).
            shared.artifacts.ArtifactError: the S3 store failed (nothing of the step is recorded).
        """
        pipe = self.redis.pipeline(transaction=False)
        for name, data, content_type in ((screenshot_name(step), jpeg, "image/jpeg"), *extra):
            if isinstance(self.artifacts, RedisArtifacts):
                self.artifacts.stage(pipe, task_id, name, data, content_type)
            else:
                self.artifacts.put(task_id, name, data, content_type)
        args = self._apply_args(task_id, (Status.RUNNING, Status.PAUSED), fields, event, 0, None, holder)
        self._scripts.apply(keys=self.keys.task_keys(task_id), args=args, client=pipe)
        result = ApplyResult.from_reply(pipe.execute()[-1])
        if result.lost:
            raise LeaseLost(f"{holder} no longer holds task {task_id}")
        return result

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
        """Store a step's JPEG in the artifact store (in Redis: for ``settings.screenshot_ttl``, the task's retention
        once it ends)."""
        self.artifacts.put(task_id, screenshot_name(step), jpeg, "image/jpeg")

    def get_screenshot(self, task_id: str, step: int) -> bytes | None:
        """A step's JPEG bytes from the artifact store, or None (no such step, or expired)."""
        artifact = self.artifacts.get(task_id, screenshot_name(step))
        return artifact.data if artifact else None

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
        """Take a queued task for ``worker_id``: returns ``(outcome, status, attempt)``.

        outcome: "started" (queued -> running, lease set, ``attempt`` incremented), "held" (``worker_id`` holds it
        already: a claim retried), "leased" (another live worker holds it), "orphaned" (running or paused with no
        live lease: its worker was lost; the reaper requeues it), "deferred" (its tenant is at its running limit:
        the id waits in the tenant's deferred list until one of the tenant's tasks ends, see
        :meth:`next_deferred`), "ended" (terminal already), "missing".
        """
        keys = self.keys
        outcome, status, attempt = self._scripts.claim(
            keys=[keys.task(task_id), keys.events(task_id), keys.lease(task_id)],
            args=[worker_id, self.settings.lease_ttl * 1000, now(), self.settings.event_stream_maxlen, keys.prefix,
                  self.settings.default_max_running, now_ms()],
        )
        return outcome.decode(), status.decode() if status else "", int(attempt)

    def renew_lease(self, task_id: str, worker_id: str) -> bool:
        """Extend ``worker_id``'s lease by ``lease_ttl``; False if it no longer holds it."""
        return bool(self._scripts.renew(keys=[self.keys.lease(task_id), self.keys.leases],
                                        args=[worker_id, self.settings.lease_ttl * 1000, task_id, now_ms()]))

    def release_lease(self, task_id: str, worker_id: str) -> bool:
        """Delete the lease if ``worker_id`` still holds it (compare-and-delete); True if it did."""
        return bool(self._scripts.release(keys=[self.keys.lease(task_id), self.keys.leases],
                                          args=[worker_id, task_id]))

    # -- webhook records ---------------------------------------------------------------------------------------------
    def record_webhook_attempt(self, task_id: str, attempt: Mapping[str, Any], keep: int = 200) -> None:
        """Append one delivery attempt (JSON-ready: ``ok``, ``error``...) to the task's webhook log (the last
        ``keep`` are kept), with the task's own expiry, and count it by outcome
        (:func:`~shared.store.metrics.webhook_outcome`)."""
        key = self.keys.webhooks(task_id)
        ttl = cast(int, self.redis.ttl(self.keys.task(task_id)))
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(dict(attempt)))
        pipe.hincrby(self.keys.metrics, metric_field("webhooks", webhook_outcome(attempt)), 1)
        pipe.ltrim(key, -keep, -1)
        if ttl and ttl > 0:
            pipe.expire(key, ttl)
        pipe.execute()

    def webhook_attempts(self, task_id: str) -> list[dict[str, Any]]:
        """Every recorded delivery attempt of a task, oldest first."""
        return [json.loads(a) for a in cast(list[bytes], self.redis.lrange(self.keys.webhooks(task_id), 0, -1))]
