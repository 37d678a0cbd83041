"""Task records, event logs, screenshots, inboxes and leases in Redis, shared by every API replica and worker.

Keys (``P`` is ``settings.key_prefix``)::

    P:task:{id}           hash    the task record (its id and IMPLIED values are not stored)
    P:task:{id}:events    stream  the event log; entry ids are "0-<seq>", seq = 1, 2, 3 ... Each entry is also
                          pub/sub published on the channel of the same name as "<seq> <json>" (api/fanout.py)
    P:task:{id}:inbox     list    injected messages, JSON {"content", "ts"}, oldest first
    P:task:{id}:shots     hash    step number -> JPEG bytes
    P:task:{id}:lease     string  id of the worker holding the task (PX = lease_ttl)
    P:task:{id}:webhooks  list    webhook delivery attempts, JSON, oldest first
    P:t:{tenant}:status:{s} zset  the tenant's task ids in status s by created_at; also :meta:{key}={value},
                                  :batch:{id} (list indexes; expired ids pruned lazily)
    P:t:{tenant}:deferred list    queued task ids waiting for the tenant's running limit
    P:tenant:{tenant}     hash    tenant settings (name, max_queued, max_running, rate_limit, webhook_secret...)
    P:control:{id}        pub/sub notices {"command", "task_id"} for the task's worker
    P:ended               pub/sub the id of every task that ends (long-poll waiters)

Status changes are Lua scripts that check :data:`shared.states.TRANSITIONS`, write the fields, append the event
and publish the control notice in one atomic round trip.
"""

from __future__ import annotations

import base64
import heapq
import json
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.settings import Settings
from shared.states import EXIT_STATUS, ExitCode, Status, sources

INT_FIELDS = frozenset({
    "exit_code", "max_steps", "steps_taken", "viewport_width", "viewport_height", "max_duration_seconds",
    "attempts", "event_seq", "messages_delivered",
})
FLOAT_FIELDS = frozenset({"created_at", "started_at", "finished_at", "temperature", "cost_usd"})
JSON_FIELDS = frozenset({"params", "metadata", "context", "usage"})
BOOL_FIELDS = frozenset({"persistent"})
IMPLIED = {
    "priority": "normal", "screenshot_mode": "url", "stream_mode": "verbose", "webhook_events": "terminal",
    "persistent": False, "steps_taken": 0, "params": {}, "metadata": {},
}
"""Record fields that are not stored while they hold these values (``TaskStore.create``) and that
:func:`decode_record` fills back in: a queued task's record is about a third smaller. ``task_id`` is not stored
either; it is the record's key."""

_LUA_COMMON = """
local function id_of(task_key, prefix)  -- records do not store their id: it is the end of their key
  return string.sub(task_key, string.len(prefix) + 7)
end
local function move_status(task_key, prefix, from, to)
  local meta = redis.call('HMGET', task_key, 'tenant', 'created_at')
  local base = prefix .. ':t:' .. meta[1] .. ':status:'
  local task_id = id_of(task_key, prefix)
  redis.call('ZREM', base .. from, task_id)
  redis.call('ZADD', base .. to, meta[2], task_id)
end
local function running_count(prefix, tenant)
  local base = prefix .. ':t:' .. tenant .. ':status:'
  return redis.call('ZCARD', base .. 'running') + redis.call('ZCARD', base .. 'paused')
end
local function running_limit(prefix, tenant, default)
  local limit = redis.call('HGET', prefix .. ':tenant:' .. tenant, 'max_running')
  if limit == false or limit == '' then return tonumber(default) end
  return tonumber(limit)
end
"""

_APPLY = _LUA_COMMON + """
-- KEYS: task, events, inbox, shots, lease
-- ARGV: allowed_from (csv, '' = any), event json ('' = none), stream maxlen, expire seconds (0 = none),
--       channel ('' = none), notice, key prefix, then field/value pairs
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' then
  local ok = false
  for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
  if not ok then return {0, cur, 0} end
end
local new = nil
for i = 8, #ARGV, 2 do if ARGV[i] == 'status' then new = ARGV[i + 1] end end
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
if new and new ~= cur then move_status(KEYS[1], ARGV[7], cur, new) end
local seq = 0
if ARGV[2] ~= '' then
  seq = redis.call('HINCRBY', KEYS[1], 'event_seq', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'data', ARGV[2])
  redis.call('PUBLISH', KEYS[2], seq .. ' ' .. ARGV[2])
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
  redis.call('EXPIRE', KEYS[1] .. ':webhooks', ttl)
  redis.call('DEL', KEYS[5])
  redis.call('PUBLISH', ARGV[7] .. ':ended', id_of(KEYS[1], ARGV[7]))
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return {1, cur, seq}
"""

_INJECT = """
-- KEYS: task, events, inbox; ARGV: allowed csv, message json, event json, maxlen, channel, notice
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return {0, cur, 0} end
redis.call('RPUSH', KEYS[3], ARGV[2])
local seq = redis.call('HINCRBY', KEYS[1], 'event_seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '0-' .. seq, 'data', ARGV[3])
redis.call('PUBLISH', KEYS[2], seq .. ' ' .. ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, cur, seq}
"""

_CLAIM = _LUA_COMMON + """
-- KEYS: task, events, lease
-- ARGV: worker id, lease ms, max attempts, now, maxlen, key prefix, default max running per tenant (0 = none)
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', '', 0} end
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= 'queued' and cur ~= 'running' and cur ~= 'paused' then return {'ended', cur, 0} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return {'leased', cur, 0} end
local task_id = id_of(KEYS[1], ARGV[6])
if cur == 'queued' then
  local tenant = redis.call('HGET', KEYS[1], 'tenant')
  local limit = running_limit(ARGV[6], tenant, ARGV[7])
  if limit > 0 and running_count(ARGV[6], tenant) >= limit then
    local deferred = ARGV[6] .. ':t:' .. tenant .. ':deferred'
    if not redis.call('LPOS', deferred, task_id) then redis.call('RPUSH', deferred, task_id) end
    return {'deferred', cur, 0}
  end
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if cur ~= 'queued' and attempts > tonumber(ARGV[3]) then return {'lost', cur, attempts} end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
local fields = {'worker', ARGV[1]}
local outcome = 'restarted'
if cur == 'queued' then
  move_status(KEYS[1], ARGV[6], 'queued', 'running')
  cur = 'running'
  outcome = 'started'
  fields = {'worker', ARGV[1], 'status', 'running', 'started_at', ARGV[4]}
end
redis.call('HSET', KEYS[1], unpack(fields))
local ev = cjson.encode({type = 'status', status = cur, task_id = task_id,
  ts = tonumber(ARGV[4]), worker = ARGV[1], attempt = attempts})
local seq = redis.call('HINCRBY', KEYS[1], 'event_seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'data', ev)
redis.call('PUBLISH', KEYS[2], seq .. ' ' .. ev)
return {outcome, cur, attempts}
"""

_NEXT_DEFERRED = _LUA_COMMON + """
-- ARGV: key prefix, tenant, default max running
-- pops up to (free slots) deferred ids that are still queued, oldest first; ids no longer queued are dropped
local limit = running_limit(ARGV[1], ARGV[2], ARGV[3])
local deferred = ARGV[1] .. ':t:' .. ARGV[2] .. ':deferred'
local free = redis.call('LLEN', deferred)
if limit > 0 then free = math.min(free, limit - running_count(ARGV[1], ARGV[2])) end
local out = {}
while free > 0 do
  local id = redis.call('LPOP', deferred)
  if not id then break end
  if redis.call('HGET', ARGV[1] .. ':task:' .. id, 'status') == 'queued' then
    table.insert(out, id)
    free = free - 1
  end
end
return out
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(frozen=True)
class TaskFilter:
    """Filters of GET /agent/tasks. Each given field must match; ``statuses`` matches any of them.
    Times are epoch seconds (``created_after`` exclusive, ``created_before`` inclusive)."""

    statuses: tuple[str, ...] = ()
    kind: str | None = None
    model: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    batch_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None

    def driver_indexes(self, store: TaskStore, tenant: str) -> list[str]:
        if self.statuses:
            return [store.index(tenant, "status", s) for s in self.statuses]
        if self.batch_id:
            return [store.index(tenant, "batch", self.batch_id)]
        if self.metadata:
            return [store.index(tenant, "meta", f"{self.metadata[0][0]}={self.metadata[0][1]}")]
        # every status: together they hold every task (there is no "all" index); kind and model are checked on
        # the records
        return [store.index(tenant, "status", s) for s in Status]

    def matches(self, record: Mapping[str, Any]) -> bool:
        meta = record.get("metadata") or {}
        return ((not self.statuses or record.get("status") in self.statuses)
                and (self.kind is None or record.get("kind") == self.kind)
                and (self.model is None or record.get("model") == self.model)
                and (self.batch_id is None or record.get("batch_id") == self.batch_id)
                and all(meta.get(k) == v for k, v in self.metadata))


def _neg(task_id: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in task_id)


def _encode_cursor(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps([position[0], position[1]]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, task_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(score), str(task_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("malformed cursor") from exc


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of a guarded write. ``found`` False: no such task. ``ok`` False: its status (``status``) refused it."""

    found: bool
    ok: bool
    status: str | None
    seq: int = 0


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


def _encode(value: Any, name: str) -> str | bytes:
    if value is None:
        return ""
    if name in JSON_FIELDS:
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes):
        return value
    return str(value)


def decode_record(raw: Mapping[bytes, bytes], task_id: str) -> dict[str, Any]:
    """Turn a task hash as Redis returns it into typed values ("" becomes None), with ``task_id`` and the
    :data:`IMPLIED` fields it does not store."""
    out: dict[str, Any] = {"task_id": task_id}
    for name, value in IMPLIED.items():
        out[name] = value.copy() if isinstance(value, dict) else value
    for k, v in raw.items():
        name = k.decode()
        text = v.decode()
        if text == "":
            out[name] = None
        elif name in INT_FIELDS:
            out[name] = int(text)
        elif name in FLOAT_FIELDS:
            out[name] = float(text)
        elif name in JSON_FIELDS:
            out[name] = json.loads(text)
        elif name in BOOL_FIELDS:
            out[name] = text == "1"
        else:
            out[name] = text
    return out


class TaskStore:
    """All Redis access for tasks. Thread-safe (redis-py's pool); one instance per process is enough.

    Args:
        client: a redis-py client with ``decode_responses=False`` (screenshots are bytes).
        settings: key prefix, TTLs and stream length.
    """

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.prefix = settings.key_prefix
        self._apply = client.register_script(_APPLY)
        self._inject = client.register_script(_INJECT)
        self._claim = client.register_script(_CLAIM)
        self._next_deferred = client.register_script(_NEXT_DEFERRED)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskStore:
        """A store on ``settings.redis_url`` with its own blocking connection pool of
        ``settings.redis_max_connections`` (redis-py's default pool fails past 100 connections)."""
        pool = redis.BlockingConnectionPool.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                                                     timeout=30, health_check_interval=30)
        return cls(redis.Redis(connection_pool=pool), settings)

    # -- keys --------------------------------------------------------------------------------------------------------
    def key(self, task_id: str, part: str = "") -> str:
        return f"{self.prefix}:task:{task_id}" + (f":{part}" if part else "")

    def channel(self, task_id: str) -> str:
        return f"{self.prefix}:control:{task_id}"

    def _keys(self, task_id: str) -> list[str]:
        return [self.key(task_id), self.key(task_id, "events"), self.key(task_id, "inbox"),
                self.key(task_id, "shots"), self.key(task_id, "lease")]

    # -- records ---------------------------------------------------------------------------------------------------
    def create(self, record: Mapping[str, Any], pipe: Any = None) -> None:
        """Write a new task record and its list indexes; its first event (seq 1) is the status event of its
        initial ``status`` at ``created_at``.

        ``record`` must hold ``task_id``, ``tenant``, ``status``, ``created_at``, ``kind`` and ``model``; None values
        are not stored. The first event is derived from the record by :meth:`read_events` and the event stream is
        created by the second event: a Redis Stream costs ~4.7 KB even with one entry, more than the rest of a
        queued task.
        With ``pipe`` (a redis-py pipeline) the commands are only buffered (batches); otherwise they run in one
        MULTI/EXEC.
        """
        self.create_many([record], pipe)

    def create_many(self, records: Iterable[Mapping[str, Any]], pipe: Any = None) -> None:
        """:meth:`create` for many records: one HSET each, and one ZADD per index for all of them (a batch of
        1000 tasks is ~1000 commands, not ~4000)."""
        own = pipe is None
        pipe = self.redis.pipeline(transaction=True) if own else pipe
        indexes: dict[str, dict[str, float]] = {}
        for record in records:
            task_id = record["task_id"]
            fields = {k: _encode(v, k) for k, v in record.items()
                      if v is not None and k != "task_id" and not (k in IMPLIED and v == IMPLIED[k])}
            fields["event_seq"] = "1"
            if record["status"] != Status.QUEUED:
                fields["first_status"] = str(record["status"])
            pipe.hset(self.key(task_id), mapping=fields)
            for index in self.indexes_of(record):
                indexes.setdefault(index, {})[task_id] = record["created_at"]
        for index, members in indexes.items():
            pipe.zadd(index, members)
        if own:
            pipe.execute()

    # -- list indexes ------------------------------------------------------------------------------------------------
    def index(self, tenant: str, name: str, value: str | None = None) -> str:
        """A tenant's sorted set of task ids by ``created_at``: name "status", "batch" or "meta" (value
        "key=value"). There is no "all", kind or model index: each entry costs ~130 bytes per task, so a list
        without a status filter merges the status indexes, and kind and model are checked on the records while
        walking (``list_tasks``)."""
        base = f"{self.prefix}:t:{tenant}:{name}"
        return base if value is None else f"{base}:{value}"

    def indexes_of(self, record: Mapping[str, Any]) -> list[str]:
        """Every index a new (queued) task belongs to."""
        tenant = record["tenant"]
        keys = [self.index(tenant, "status", record.get("status") or "queued")]
        keys += [self.index(tenant, "meta", f"{k}={v}") for k, v in (record.get("metadata") or {}).items()]
        if record.get("batch_id"):
            keys.append(self.index(tenant, "batch", record["batch_id"]))
        return keys

    def list_tasks(self, tenant: str, filters: TaskFilter, limit: int, cursor: str | None = None,
                   scan_budget: int = 5000) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the tenant's tasks matching ``filters``, newest first, and the cursor of the next page.

        The most selective index (status, batch, metadata, else every status index merged) drives the walk,
        newest first; other filters are checked on the records, fetched in pipelined chunks. A page costs
        O(limit) when the indexes answer the query, and at most ``scan_budget`` index entries otherwise (the page
        may then be short, with a cursor to go on). Ids whose records expired are pruned from the index as they
        are met; a task that changes status during the walk is shown once.

        Raises:
            ValueError: a malformed cursor.
        """
        after = _decode_cursor(cursor) if cursor else None
        drivers = filters.driver_indexes(self, tenant)
        high = filters.created_before if filters.created_before is not None else float("inf")
        low = filters.created_after if filters.created_after is not None else float("-inf")  # exclusive (below)
        ceiling = min(high, after[0]) if after else high
        top = "+inf" if ceiling == float("inf") else repr(ceiling)
        bottom = f"({low!r}" if low != float("-inf") else "-inf"
        # when the indexes answer the query alone every entry is a match (unless expired): fetch what the page
        # needs; otherwise twice that, as records are then filtered
        exact = not (filters.kind or filters.model) and (
            bool(filters.statuses) + bool(filters.batch_id) + len(filters.metadata)) <= 1
        factor = 1 if exact else 2
        size = min(200, limit * factor)
        pipe = self.redis.pipeline(transaction=True)  # the first rows of every index, in one consistent read
        for index in drivers:
            pipe.zrevrangebyscore(index, top, bottom, start=0, num=size, withscores=True)
        streams = [self._walk(index, top, bottom, after, first, size)
                   for index, first in zip(drivers, pipe.execute(), strict=True)]
        merged = heapq.merge(*streams, key=lambda e: (-e[0], _neg(e[1])))
        page: list[dict[str, Any]] = []
        last: tuple[float, str] | None = None
        scanned = 0
        chunk: list[tuple[float, str, str]] = []
        seen: set[str] = set()
        for entry in merged:
            if entry[1] in seen:  # it moved between two status indexes while we walked them
                continue
            seen.add(entry[1])
            chunk.append(entry)
            if len(chunk) >= min(max(limit - len(page), 1) * factor, 200):
                last = self._take(chunk, filters, page, limit) or last
                scanned += len(chunk)
                chunk = []
                if len(page) >= limit or scanned >= scan_budget:
                    break
        else:
            if chunk:
                last = self._take(chunk, filters, page, limit) or last
            if len(page) < limit:
                return page, None
        if len(page) >= limit:
            last = (page[-1]["created_at"], page[-1]["task_id"])
        return page, _encode_cursor(last) if last else None

    def _walk(self, index: str, top: str, bottom: str, after: tuple[float, str] | None, first: list[Any],
              size: int) -> Iterator[tuple[float, str, str]]:
        """Entries of one index as ``(score, task id, index)``, newest first, strictly after the cursor.
        ``first`` is the answer to the first ``size`` rows (fetched for every index at once); later rows are
        read ``200`` at a time from the last score seen (not by offset: entries pruned or moved to another status
        meanwhile would shift an offset and skip live tasks)."""
        rows = cast(list[tuple[bytes, float]], first)
        last_score, ties = None, 0  # the lowest score read so far, and how many entries of it were read
        while rows:
            for member, score in rows:
                last_score, ties = (score, ties + 1) if score == last_score else (score, 1)
                task_id = member.decode()
                if after is not None and (score, task_id) >= after:
                    continue  # at or before the cursor: equal scores are ordered by id, descending
                yield score, task_id, index
            if len(rows) < size:
                return
            size = 200
            rows = cast(list[tuple[bytes, float]], self.redis.zrevrangebyscore(
                index, repr(last_score), bottom, start=ties, num=size, withscores=True))

    def _take(self, chunk: list[tuple[float, str, str]], filters: TaskFilter, page: list[dict[str, Any]],
              limit: int) -> tuple[float, str] | None:
        pipe = self.redis.pipeline(transaction=False)
        for _score, task_id, _index in chunk:
            pipe.hgetall(self.key(task_id))
        last = None
        gone: list[tuple[str, str]] = []
        for (score, task_id, index), raw in zip(chunk, pipe.execute()):
            if not raw:
                gone.append((index, task_id))
                continue
            if len(page) >= limit:
                break
            last = (score, task_id)
            record = decode_record(raw, task_id)
            if filters.matches(record):
                page.append(record)
        if gone:
            prune = self.redis.pipeline(transaction=False)
            for index, task_id in gone:
                prune.zrem(index, task_id)
            prune.execute()
        return last

    def count(self, tenant: str, status: Status | str) -> int:
        """How many of ``tenant``'s tasks have ``status`` (O(1))."""
        return int(cast(int, self.redis.zcard(self.index(tenant, "status", str(status)))))

    def next_deferred(self, tenant: str) -> list[str]:
        """Pop the deferred task ids of ``tenant`` that now fit under its running limit and are still queued
        (oldest first; cancelled ones are dropped). The caller enqueues each and gives back, with
        :meth:`return_deferred`, any it could not enqueue."""
        ids = self._next_deferred(args=[self.prefix, tenant, self.settings.default_max_running])
        return [i.decode() for i in ids]

    def return_deferred(self, tenant: str, task_ids: list[str]) -> None:
        """Put ids back at the front of the tenant's deferred list, in their order."""
        if task_ids:
            self.redis.lpush(self.index(tenant, "deferred"), *reversed(task_ids))

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The typed task record, or None when no such task exists (or it expired)."""
        raw = self.redis.hgetall(self.key(task_id))
        return decode_record(raw, task_id) if raw else None  # type: ignore[arg-type]

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
        """Atomically: check the status is in ``allowed_from`` (None: any), set ``fields``, append ``event``,
        expire the task's keys after ``expire`` seconds (0: keep), and publish control ``notice`` (a command name).
        """
        args = self._apply_args(task_id, allowed_from, fields, event, expire, notice)
        found, status, seq = self._apply(keys=self._keys(task_id), args=args)
        return ApplyResult(found != -1, found == 1, status.decode() if status else None, int(seq))

    def record_step(self, task_id: str, step: int, jpeg: bytes, fields: Mapping[str, Any],
                    event: Mapping[str, Any]) -> ApplyResult:
        """A worker's step in one round trip: store the screenshot, then (if the task is still running or paused)
        set ``fields`` and append ``event``. ``ok`` False: the task ended under the worker."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(task_id, "shots"), str(step), jpeg)
        pipe.expire(self.key(task_id, "shots"), self.settings.screenshot_ttl)
        args = self._apply_args(task_id, (Status.RUNNING, Status.PAUSED), fields, event, 0, None)
        self._apply(keys=self._keys(task_id), args=args, client=pipe)
        found, status, seq = pipe.execute()[-1]
        return ApplyResult(found != -1, found == 1, status.decode() if status else None, int(seq))

    def _apply_args(self, task_id: str, allowed_from: Iterable[Status | str] | None,
                    fields: Mapping[str, Any] | None, event: Mapping[str, Any] | None, expire: int,
                    notice: str | None) -> list[Any]:
        args: list[Any] = [
            # None: any status; an empty set: none ("-" matches no status)
            (",".join(str(s) for s in allowed_from) or "-") if allowed_from is not None else "",
            json.dumps(event) if event else "",
            self.settings.event_stream_maxlen,
            expire,
            self.channel(task_id) if notice else "",
            json.dumps({"command": notice, "task_id": task_id}) if notice else "",
            self.prefix,
        ]
        for k, v in (fields or {}).items():
            args += [k, _encode(v, k)]
        return args

    def transition(
        self, task_id: str, to: Status, fields: Mapping[str, Any] | None = None, notice: str | None = None,
        only_from: Iterable[Status] | None = None, **event: Any,
    ) -> ApplyResult:
        """Move the task to ``to`` if the transition table allows it from its current status (and, with
        ``only_from``, if that status is one of them), with a status event."""
        allowed = sources(to) if only_from is None else sources(to) & frozenset(only_from)
        body = {"type": "status", "status": str(to), "task_id": task_id, "ts": now(), **event}
        return self.apply(task_id, allowed_from=allowed, fields={**(fields or {}), "status": str(to)},
                          event=body, notice=notice)

    def finish(
        self, task_id: str, code: ExitCode, *, result: str | None = None, error: str | None = None,
        fields: Mapping[str, Any] | None = None, notice: str | None = None,
    ) -> ApplyResult:
        """End the task: terminal status for ``code``, ``exit_code``, ``finished_at``, the ``end`` event, and the
        retention TTL on all its keys. Refused (ok False) if the task already ended.
        """
        status = EXIT_STATUS[code]
        ts = now()
        event = {"type": "end", "task_id": task_id, "status": str(status), "exit_code": int(code),
                 "result": result, "error": error, "ts": ts}
        all_fields = {**(fields or {}), "status": str(status), "exit_code": int(code), "finished_at": ts,
                      "result": result, "error": error}
        return self.apply(task_id, allowed_from=sources(status), fields=all_fields, event=event,
                          expire=self.settings.task_retention, notice=notice)

    def inject(self, task_id: str, content: str) -> ApplyResult:
        """Queue a user message for the agent (kept in the inbox until the worker delivers it), log a ``message``
        event and notify the worker. Refused unless the task is queued, running or paused."""
        ts = now()
        event = {"type": "message", "task_id": task_id, "role": "user", "content": content, "ts": ts}
        found, status, seq = self._inject(
            keys=[self.key(task_id), self.key(task_id, "events"), self.key(task_id, "inbox")],
            args=["queued,running,paused", json.dumps({"content": content, "ts": ts}), json.dumps(event),
                  self.settings.event_stream_maxlen, self.channel(task_id),
                  json.dumps({"command": "message", "task_id": task_id})],
        )
        return ApplyResult(found != -1, found == 1, status.decode() if status else None, int(seq))

    # -- events ----------------------------------------------------------------------------------------------------
    def append_event(self, task_id: str, event: Mapping[str, Any], fields: Mapping[str, Any] | None = None) -> int:
        """Append ``event`` (and set ``fields``) whatever the status; returns its seq (0 if the task is gone)."""
        return self.apply(task_id, fields=fields, event={"task_id": task_id, "ts": now(), **event}).seq

    def last_seq(self, task_id: str) -> int:
        """The seq of the task's latest event (0 when the task does not exist)."""
        raw = cast(bytes | None, self.redis.hget(self.key(task_id), "event_seq"))
        return int(raw) if raw else 0

    def read_events(self, task_id: str, after: int = 0, block_ms: int | None = None,
                    count: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Events with seq > ``after``, oldest first, as ``(seq, event)``; blocks up to ``block_ms`` for new ones."""
        out: list[tuple[int, dict[str, Any]]] = []
        if after < 1:
            first_status, created_at = cast(list[bytes | None], self.redis.hmget(
                self.key(task_id), ["first_status", "created_at"]))
            if created_at is not None:
                status = (first_status or b"queued").decode()
                out.append((1, {"type": "status", "status": status, "task_id": task_id, "ts": float(created_at)}))
                after, block_ms = 1, None  # we have something to return: do not block for more
        reply = cast(list[Any], self.redis.xread({self.key(task_id, "events"): f"0-{after}"}, count=count,
                                                  block=block_ms))
        for _stream, entries in reply or []:
            for entry_id, data in entries:
                seq = int(entry_id.split(b"-")[1])
                out.append((seq, json.loads(data[b"data"])))
        return out

    # -- screenshots -------------------------------------------------------------------------------------------------
    def put_screenshot(self, task_id: str, step: int, jpeg: bytes) -> None:
        """Store a step's JPEG for ``settings.screenshot_ttl`` (the task's retention once it ends)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(task_id, "shots"), str(step), jpeg)
        pipe.expire(self.key(task_id, "shots"), self.settings.screenshot_ttl)
        pipe.execute()

    def get_screenshot(self, task_id: str, step: int) -> bytes | None:
        return cast(bytes | None, self.redis.hget(self.key(task_id, "shots"), str(step)))

    # -- inbox -------------------------------------------------------------------------------------------------------
    def inbox(self, task_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Injected messages from index ``start`` on, as ``{"content", "ts"}``."""
        raw = cast(list[bytes], self.redis.lrange(self.key(task_id, "inbox"), start, -1))
        return [json.loads(m) for m in raw]

    # -- leases ------------------------------------------------------------------------------------------------------
    def claim(self, task_id: str, worker_id: str) -> tuple[str, str, int]:
        """Take the task for ``worker_id``: returns ``(outcome, status, attempts)``.

        outcome: "started" (queued -> running), "restarted" (its previous worker's lease expired), "leased"
        (another live worker holds it), "ended" (terminal already), "lost" (too many attempts), "missing",
        "deferred" (its tenant is at its running limit: the id waits in the tenant's deferred list until one of
        the tenant's tasks ends, see :meth:`next_deferred`).
        """
        outcome, status, attempts = self._claim(
            keys=[self.key(task_id), self.key(task_id, "events"), self.key(task_id, "lease")],
            args=[worker_id, self.settings.lease_ttl * 1000, self.settings.max_attempts, now(),
                  self.settings.event_stream_maxlen, self.prefix, self.settings.default_max_running],
        )
        return outcome.decode(), status.decode() if status else "", int(attempts)

    def renew_lease(self, task_id: str, worker_id: str) -> bool:
        """Extend ``worker_id``'s lease by ``lease_ttl``; False if it no longer holds it."""
        return bool(self._renew(keys=[self.key(task_id, "lease")], args=[worker_id, self.settings.lease_ttl * 1000]))

    def release_lease(self, task_id: str, worker_id: str) -> None:
        """Delete the lease if ``worker_id`` still holds it (compare-and-delete, one script)."""
        self._release(keys=[self.key(task_id, "lease")], args=[worker_id])
