"""The Redis backend of the artifact store (``shared/artifacts.py``), and the choice of backend.

A task's artifacts live in its ``P:task:{id}:shots`` hash (``Keys.shots``), as screenshots always have: a
screenshot's field is its step number (``screenshots/3.jpg`` -> ``3``), any other artifact's field is its name, and
a content type its name does not imply is kept beside it under ``<field>|type``. The hash expires with the task:
``screenshot_ttl`` after each write while the task runs, ``task_retention`` once it ended (``apply.lua`` sets the
TTL of every key of the task at its end). ``TaskStore.record_step`` writes a step's screenshot in the same round
trip as the step's record (:meth:`RedisArtifacts.stage`).
"""

from __future__ import annotations

import re
from typing import cast

import redis

from shared.artifacts import Artifact, ArtifactStore, S3Artifacts, check_name, type_of
from shared.settings import Settings
from shared.store.keys import Keys

_SCREENSHOT = re.compile(r"screenshots/([0-9]+)\.jpg")


def field_of(name: str) -> str:
    """The hash field of artifact ``name`` (a screenshot's is its step number, as before artifacts had names)."""
    match = _SCREENSHOT.fullmatch(check_name(name))
    return match.group(1) if match else name


class RedisArtifacts:
    """Artifacts in the task's Redis hash (see the module's docstring). Reached as ``TaskStore.artifacts``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: ``screenshot_ttl``.
    """

    backend = "redis"

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings):
        self._redis, self._keys, self._settings = client, keys, settings

    def stage(self, pipe: redis.client.Pipeline, task_id: str, name: str, data: bytes, content_type: str) -> None:
        """Buffer the writes of :meth:`put` in ``pipe`` for a task that is running (TTL ``screenshot_ttl``)."""
        key, field = self._keys.shots(task_id), field_of(name)
        mapping = {field: data}
        if content_type != type_of(name):
            mapping[f"{field}|type"] = content_type.encode()
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(key, self._settings.screenshot_ttl)

    def put(self, task_id: str, name: str, data: bytes, content_type: str) -> None:
        """HSET the artifact; the hash lives ``screenshot_ttl``, or as long as the task's record when that is longer
        (an artifact added after the task ended keeps the task's retention)."""
        record_ttl = cast(int, self._redis.ttl(self._keys.task(task_id)))
        pipe = self._redis.pipeline(transaction=False)
        self.stage(pipe, task_id, name, data, content_type)
        if record_ttl > self._settings.screenshot_ttl:
            pipe.expire(self._keys.shots(task_id), record_ttl)
        pipe.execute()

    def get(self, task_id: str, name: str) -> Artifact | None:
        """HMGET the artifact and its content type."""
        field = field_of(name)
        data, kind = cast(list[bytes | None], self._redis.hmget(self._keys.shots(task_id), [field, f"{field}|type"]))
        if data is None:
            return None
        return Artifact(data, kind.decode() if kind else type_of(name))

    def url(self, task_id: str, name: str, expires: int) -> str | None:
        """None: Redis has no URL of its own (the API serves the bytes)."""
        check_name(name)
        return None

    def delete(self, task_id: str, name: str) -> None:
        """HDEL the artifact and its content type."""
        field = field_of(name)
        self._redis.hdel(self._keys.shots(task_id), field, f"{field}|type")

    def keep(self, task_id: str, seconds: int) -> None:
        """Keep the task's artifacts ``seconds`` from now (a saved environment's blob lives as long as its record)."""
        self._redis.expire(self._keys.shots(task_id), seconds)

    def delete_task(self, task_id: str) -> int:
        """DEL the task's hash; returns how many artifacts it held."""
        key = self._keys.shots(task_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hkeys(key)
        pipe.delete(key)
        fields, _ = pipe.execute()
        return sum(1 for f in fields if not f.endswith(b"|type"))


def open_artifacts(client: redis.Redis, keys: Keys, settings: Settings) -> ArtifactStore:
    """The artifact store ``settings.artifacts_url`` names: Redis (empty or "redis") or S3 (``s3://bucket/prefix``).

    Raises:
        ValueError: any other value (the message names ``LODESTAR_ARTIFACTS_URL``).
    """
    url = settings.artifacts_url.strip()
    if url in ("", "redis"):
        return RedisArtifacts(client, keys, settings)
    if url.startswith("s3://"):
        return S3Artifacts.from_settings(settings)
    raise ValueError(f"LODESTAR_ARTIFACTS_URL: expected empty (Redis) or s3://bucket/prefix, got {url!r}")
