"""Saved environments: what a ``persistent`` task leaves for the tasks that name its ``environment_id``.

An environment is a record in Redis (``P:env:{id}``, in its tenant's index ``P:t:{tenant}:environments``; keys in
``keys.py``) and one blob in the artifact store (``shared/artifacts.py``: Redis or S3), owned by the environment's
id: a browser's Playwright storage state (JSON: cookies, localStorage, IndexedDB) or a desktop home folder
(tar.gz). The record names its blob (``artifact``); a save writes the new blob first, then the record, then deletes
the old blob, so a record never names a missing blob.

One task at a time: a task that will save the environment (``persistent``) holds it from its submit until it ends
(``in_use_by``; a holder whose record ended, or that was never stored, no longer holds it: nothing needs to let go
when a task ends). Tasks that only restore it hold nothing. The atomic parts are ``lua/environment.lua``.

Retention: ``environment_retention`` seconds (0: ``task_retention``) after the last save or the last persistent task
that took it; the record expires then and its Redis blob with it (an S3 blob by the bucket's lifecycle rule, counted
from the last save: an environment whose persistent tasks keep failing for longer than that loses its state and
starts fresh); listing prunes what expired from the index, and DELETE deletes both at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.artifacts import ArtifactStore
from shared.settings import Settings
from shared.states import TERMINAL
from shared.store.artifacts import RedisArtifacts
from shared.store.keys import Keys
from shared.store.scripts import Scripts

HOLD_GRACE_MS = 60_000
"""Milliseconds during which a holder with no task record still holds the environment (its submit is storing it)."""
KINDS_STATE = {"browser": ("state", "json", "application/json"), "desktop": ("home", "tar.gz", "application/gzip")}
"""Per kind: the blob's name stem, extension and content type."""


@dataclass(frozen=True)
class Environment:
    """One saved environment. Times are epoch seconds (``saved_at`` None until the first save); ``size_bytes`` is
    the blob's size (0 before the first save); ``artifact`` the blob's name ("" before the first save);
    ``in_use_by`` the task that last took it (check :meth:`Environments.holders` for whether it still holds it)."""

    environment_id: str
    tenant: str
    kind: str
    created_at: float
    updated_at: float
    saved_at: float | None
    size_bytes: int
    source_task_id: str | None
    artifact: str
    saves: int
    in_use_by: str | None
    expires_at: float

    def to_json(self, holder: str | None) -> dict[str, Any]:
        """The public JSON (``shared.schemas.EnvironmentSchema``); ``holder``: the active task holding it or None.
        Times as ISO 8601 UTC."""
        from shared.task import iso_time

        return {"environment_id": self.environment_id, "kind": self.kind, "created_at": iso_time(self.created_at),
                "updated_at": iso_time(self.updated_at), "saved_at": iso_time(self.saved_at),
                "size_bytes": self.size_bytes, "saves": self.saves, "source_task_id": self.source_task_id,
                "in_use_by": holder, "expires_at": iso_time(self.expires_at)}


@dataclass(frozen=True)
class Take:
    """Outcome of :meth:`Environments.take`: ``ok``, or why not: ``missing`` (no such environment of the tenant),
    ``kind`` (it is of kind ``detail``), ``busy`` (task ``detail`` holds it)."""

    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Environments:
    """The saved environments of every tenant. Reached as ``TaskStore.environments``; thread-safe.

    Args:
        client: the store's Redis client.
        keys: key names.
        settings: ``environment_retention`` (or ``task_retention``), ``environment_max_bytes``.
        scripts: the store's scripts (``environment.lua``).
        artifacts: where the blobs are (owner: the environment's id).
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, scripts: Scripts,
                 artifacts: ArtifactStore):
        self._redis, self._keys, self._settings, self._script = client, keys, settings, scripts.environment
        self.artifacts = artifacts

    @property
    def retention(self) -> int:
        """Seconds an environment is kept after its last save or take."""
        return self._settings.environment_retention or self._settings.task_retention

    def _run(self, env_id: str, tenant: str, op: str, *args: Any) -> Any:
        keys = [self._keys.environment(env_id), self._keys.environments(tenant)]
        return self._script(keys=keys, args=[op, self._keys.prefix, int(time.time() * 1000), HOLD_GRACE_MS, *args])

    # -- tasks -----------------------------------------------------------------------------------------------------
    def take(self, env_id: str, tenant: str, kind: str, task_id: str, create: bool = False) -> Take:
        """Make ``task_id`` the holder of environment ``env_id`` of ``tenant`` (refreshing its retention); with
        ``create``, a missing one is created for it (empty: nothing saved yet). Atomic.

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        reply = self._run(env_id, tenant, "take", task_id, tenant, kind, "1" if create else "0", time.time(),
                          self.retention)
        code = int(reply[0])
        detail = reply[1].decode() if len(reply) > 1 else ""
        if code == 1 and isinstance(self.artifacts, RedisArtifacts):  # the blob lives as long as the record
            self.artifacts.keep(env_id, self.retention)
        return Take({1: "ok", -1: "missing", -2: "kind", 0: "busy"}[code], detail)

    def release(self, env_id: str, tenant: str, task_id: str) -> bool:
        """Let go of an environment ``task_id`` took but will not run with (its submit failed); one created for it
        is deleted. Returns False when it did not hold it."""
        return bool(self._run(env_id, tenant, "release", task_id))

    def save(self, env_id: str, tenant: str, task_id: str, data: bytes) -> str | None:
        """Store ``data`` as the environment's state, saved by ``task_id`` (which holds it, or nobody does): the blob,
        then the record, then the old blob is deleted. Returns None when saved, else why not.

        Raises:
            redis.RedisError, shared.artifacts.ArtifactError: a store is unreachable.
        """
        limit = self._settings.environment_max_bytes
        if len(data) > limit:
            return f"{len(data)} bytes is over LODESTAR_ENVIRONMENT_MAX_BYTES ({limit})"
        record = cast(dict[bytes, bytes], self._redis.hgetall(self._keys.environment(env_id)))
        if not record:
            return "the environment was deleted while the task ran"
        stem, ext, content_type = KINDS_STATE[record[b"kind"].decode()]
        name = f"environment/{stem}-{task_id}.{ext}"
        self.artifacts.put(env_id, name, data, content_type)
        reply = self._run(env_id, tenant, "save", task_id, time.time(), len(data), name, self.retention)
        if int(reply[0]) != 1:
            self.artifacts.delete(env_id, name)
            return ("the environment was deleted while the task ran" if int(reply[0]) == -1 else
                    f"task {reply[1].decode()} holds the environment now")
        if isinstance(self.artifacts, RedisArtifacts):
            self.artifacts.keep(env_id, self.retention)
        previous = reply[1].decode()
        if previous and previous != name:
            self.artifacts.delete(env_id, previous)
        return None

    def state(self, env: Environment) -> bytes | None:
        """The environment's saved state (None before its first save, or when it was deleted meanwhile).

        Raises:
            redis.RedisError, shared.artifacts.ArtifactError: a store is unreachable.
        """
        for _ in range(3):  # a save may replace the blob between reading the record and reading the blob
            if not env.artifact:
                return None
            artifact = self.artifacts.get(env.environment_id, env.artifact)
            if artifact is not None:
                return artifact.data
            again = self.get(env.tenant, env.environment_id)
            if again is None or again.artifact == env.artifact:
                return None
            env = again
        return None

    # -- reading and deleting ---------------------------------------------------------------------------------------
    def get(self, tenant: str, env_id: str) -> Environment | None:
        """Environment ``env_id`` of ``tenant``, or None (no such environment, expired, or another tenant's)."""
        raw = cast(dict[bytes, bytes], self._redis.hgetall(self._keys.environment(env_id)))
        if not raw or raw.get(b"tenant", b"").decode() != tenant:
            return None
        return _decode(env_id, raw, self.retention)

    def of_tenant(self, tenant: str, kind: str | None = None, limit: int = 50,
                  after: tuple[float, str] | None = None) -> tuple[list[Environment], bool]:
        """The tenant's environments, last saved or taken first, at most ``limit``, starting after the position
        ``after`` (``(updated_at, environment id)`` of a previous page's last one: ``shared.store.listing``'s
        cursors); and whether there are more. Expired ones are pruned from the index on the way (their Redis blobs
        expired with them)."""
        index = self._keys.environments(tenant)
        stale = time.time() - self.retention
        self._redis.zremrangebyscore(index, "-inf", stale)
        top: float | str = "+inf" if after is None else after[0]
        ranked = cast(list[tuple[bytes, float]], self._redis.zrevrangebyscore(index, top, "-inf", withscores=True))
        ids = [member.decode() for member, score in ranked
               if after is None or score < after[0] or member.decode() < after[1]]
        found: list[Environment] = []
        missing = []
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            pipe = self._redis.pipeline(transaction=False)
            for env_id in chunk:
                pipe.hgetall(self._keys.environment(env_id))
            for env_id, raw in zip(chunk, pipe.execute(), strict=True):
                if not raw:
                    missing.append(env_id)
                elif kind is None or raw.get(b"kind", b"").decode() == kind:
                    found.append(_decode(env_id, raw, self.retention))
            if len(found) > limit:
                break
        if missing:
            self._redis.zrem(index, *missing)
        return found[:limit], len(found) > limit

    def holders(self, envs: Iterable[Environment]) -> list[str | None]:
        """For each environment, the active task holding it (its ``in_use_by`` if that task has not ended), else
        None. One round trip."""
        envs = list(envs)
        held = [env.in_use_by for env in envs]
        if not any(held):
            return [None] * len(envs)
        pipe = self._redis.pipeline(transaction=False)
        for task_id in held:
            pipe.hget(self._keys.task(task_id or "-"), "status")
        statuses = pipe.execute()
        terminal = {str(s) for s in TERMINAL}
        return [task_id if task_id and status is not None and status.decode() not in terminal else None
                for task_id, status in zip(held, statuses, strict=True)]

    def delete(self, tenant: str, env_id: str) -> Take:
        """Delete environment ``env_id`` of ``tenant`` and its blob now, unless an active task holds it.
        Returns ``ok``, ``missing`` or ``busy`` (with the holder).

        Raises:
            redis.RedisError, shared.artifacts.ArtifactError: a store is unreachable.
        """
        reply = self._run(env_id, tenant, "delete", tenant)
        code = int(reply[0])
        if code == -1:
            return Take("missing")
        if code == 0:
            return Take("busy", reply[1].decode())
        self.artifacts.delete_task(env_id)
        return Take("ok")


def _decode(env_id: str, raw: dict[bytes, bytes], retention: int) -> Environment:
    text = {k.decode(): v.decode() for k, v in raw.items()}
    updated_at = float(text.get("updated_at") or 0)
    return Environment(
        environment_id=env_id, tenant=text["tenant"], kind=text.get("kind", "browser"),
        created_at=float(text.get("created_at") or 0), updated_at=updated_at,
        saved_at=float(text["saved_at"]) if text.get("saved_at") else None,
        size_bytes=int(text.get("size_bytes") or 0), source_task_id=text.get("source_task_id") or None,
        artifact=text.get("artifact", ""), saves=int(text.get("saves") or 0),
        in_use_by=text.get("in_use_by") or None, expires_at=updated_at + retention)
