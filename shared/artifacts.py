"""Named binary artifacts of a task (step screenshots; saved environments, owned by the environment's id) behind one
small interface, :class:`ArtifactStore`, with two backends chosen by ``LODESTAR_ARTIFACTS_URL``:

- empty (the default, one machine): Redis, ``shared.store.artifacts.RedisArtifacts``: the task's
  ``P:task:{id}:shots`` hash, kept ``screenshot_ttl`` while the task runs and ``task_retention`` once it ended,
  like the rest of the task (its end sets the TTL of all its keys in one atomic write);
- ``s3://bucket/prefix``: any S3-compatible store (AWS S3, MinIO, Ceph RGW, moto), :class:`S3Artifacts`, through
  boto3 and boto3's own settings (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL``). Objects are ``<prefix>/<task id>/<name>``; retention is the bucket's object-expiration
  lifecycle rule (:func:`lifecycle_rule`, applied by ``lodestar artifacts lifecycle --apply``), which deletes each
  object :func:`lifecycle_days` days after it was written: longer than the task's record lives.

Names are relative paths of letters, digits, ``. _ - /`` (``screenshots/3.jpg``, :func:`screenshot_name`); the
content type travels with the bytes (S3's ``Content-Type``; in Redis only when the name's extension does not imply
it). A worker writes a step's screenshot before the step's record (``TaskStore.record_step``), so a record never
names a missing object.
"""

from __future__ import annotations

import math
import mimetypes
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shared.settings import Settings

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
"""A valid artifact name: path segments that do not start with a dot (no ``..``, no leading ``/``)."""
LIFECYCLE_RULE_ID = "lodestar-artifacts-retention"
"""The ``ID`` of the lifecycle rule :meth:`S3Artifacts.apply_lifecycle` adds or replaces."""


@dataclass(frozen=True)
class Artifact:
    """An artifact's bytes and its MIME type (``image/jpeg`` for screenshots)."""

    data: bytes
    content_type: str


class ArtifactError(Exception):
    """The artifact store failed (unreachable, refused the credentials, no such bucket): the message says which
    operation and why. Never raised for an artifact that does not exist (``get`` returns None)."""


class ArtifactStore(Protocol):
    """Named binary artifacts of tasks. Implementations are thread-safe; one per process is enough.

    ``backend`` is "redis" or "s3". Errors: :class:`ArtifactError` (S3) or ``redis.RedisError`` (Redis) when the
    store cannot be reached; ``ValueError`` for a name that is not a valid artifact name (:data:`NAME`).
    """

    backend: str

    def put(self, task_id: str, name: str, data: bytes, content_type: str) -> None:
        """Store ``data`` as the task's artifact ``name`` (replacing any of that name)."""
        ...

    def get(self, task_id: str, name: str) -> Artifact | None:
        """The artifact, or None when there is none of that name (never written, or expired)."""
        ...

    def url(self, task_id: str, name: str, expires: int) -> str | None:
        """A URL that fetches the artifact without credentials for ``expires`` seconds (S3: a presigned GET), or
        None when the backend has none (Redis: serve the bytes). The URL is made without checking that the
        artifact exists."""
        ...

    def delete(self, task_id: str, name: str) -> None:
        """Delete the task's artifact ``name`` now (nothing happens when there is none)."""
        ...

    def delete_task(self, task_id: str) -> int:
        """Delete every artifact of the task now; returns how many there were."""
        ...


def screenshot_name(step: int) -> str:
    """The artifact name of a step's screenshot: ``screenshots/<step>.jpg`` (a JPEG)."""
    return f"screenshots/{int(step)}.jpg"


def aria_name(step: int) -> str:
    """The artifact name of a step's ARIA snapshot, where one was taken: ``aria/<step>.yaml.gz`` (UTF-8 text,
    gzipped: snapshots shrink about tenfold, and they stay in Redis as long as the screenshots)."""
    return f"aria/{int(step)}.yaml.gz"


def check_name(name: str) -> str:
    """``name`` if it is a valid artifact name. Raises ValueError otherwise."""
    if not NAME.fullmatch(name) or len(name) > 200:
        raise ValueError(f"not a valid artifact name: {name!r}")
    return name


def type_of(name: str) -> str:
    """The MIME type a name's extension implies (``application/octet-stream`` when none)."""
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def lifecycle_days(settings: Settings) -> int:
    """Days after which the lifecycle rule deletes an object: the task's retention after its end plus its longest
    run (``max_duration_limit``), rounded up, plus one day because S3 counts from the next midnight UTC. An object
    is written during its task's run, so it outlives the task's record. A saved environment's blob is written again
    at each save, so it outlives the environment's record when ``environment_retention`` is the longer retention."""
    retention = max(settings.task_retention, settings.environment_retention)
    return math.ceil((retention + settings.max_duration_limit) / 86400) + 1


def lifecycle_rule(prefix: str, days: int) -> dict[str, Any]:
    """The S3 lifecycle rule (``PutBucketLifecycleConfiguration`` shape) expiring the objects under ``prefix``
    ``days`` days after they were written, and aborting incomplete multipart uploads after a day."""
    return {"ID": LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": f"{prefix}/" if prefix else ""},
            "Expiration": {"Days": days}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix`` (prefix without slashes at its ends; may be empty).

    Raises:
        ValueError: not an ``s3://`` URL with a bucket.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"LODESTAR_ARTIFACTS_URL: expected s3://bucket/prefix, got {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3Artifacts:
    """Artifacts as S3 objects ``<prefix>/<task id>/<name>`` in ``bucket``, through boto3 (its client is made on
    first use, so a process that never touches an artifact never builds one).

    Args:
        bucket: the bucket (it must exist; Lodestar never creates buckets).
        prefix: key prefix, without slashes at its ends ("" for none).
        timeout: seconds for connecting and for each read (boto3 retries twice more, standard mode).
        max_connections: HTTP connections the client keeps (concurrent requests in one process).
        client: a boto3 S3 client to use instead (tests).
    """

    backend = "s3"

    def __init__(self, bucket: str, prefix: str = "", timeout: float = 10.0, max_connections: int = 50,
                 client: Any = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._timeout, self._max_connections = timeout, max_connections
        self._client = client
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Artifacts:
        """The store ``settings.artifacts_url`` names. Raises ValueError for a malformed URL."""
        bucket, prefix = parse_s3_url(settings.artifacts_url)
        return cls(bucket, prefix, settings.artifacts_timeout, settings.artifacts_max_connections)

    @property
    def client(self) -> Any:
        """The boto3 S3 client (endpoint, region and credentials from boto3's environment and config files)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(connect_timeout=self._timeout, read_timeout=self._timeout,
                                    retries={"max_attempts": 3, "mode": "standard"},
                                    max_pool_connections=self._max_connections)
                    self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def folder(self, task_id: str) -> str:
        """The key prefix of the task's objects: ``<prefix>/<task id>/``."""
        return f"{self.prefix}/{task_id}/" if self.prefix else f"{task_id}/"

    def key(self, task_id: str, name: str) -> str:
        """The object key of artifact ``name`` of the task. Raises ValueError for an invalid name."""
        return self.folder(task_id) + check_name(name)

    def _call(self, what: str, call: Any, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(**params)
        except ClientError as exc:
            if what == "get" and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise ArtifactError(f"S3 {what} s3://{self.bucket}/{params.get('Key') or params.get('Prefix', '')}: "
                                f"{exc}") from exc
        except BotoCoreError as exc:
            raise ArtifactError(f"S3 {what} s3://{self.bucket}: {exc}") from exc

    def put(self, task_id: str, name: str, data: bytes, content_type: str) -> None:
        """PUT the object (one request). Raises ArtifactError."""
        self._call("put", self.client.put_object, Bucket=self.bucket, Key=self.key(task_id, name), Body=data,
                   ContentType=content_type)

    def get(self, task_id: str, name: str) -> Artifact | None:
        """GET the object, read whole; None when it does not exist. Raises ArtifactError."""
        reply = self._call("get", self.client.get_object, Bucket=self.bucket, Key=self.key(task_id, name))
        if reply is None:
            return None
        body = reply["Body"]
        try:
            data = body.read()
        except Exception as exc:  # the connection broke mid-body (botocore and urllib3 raise their own kinds)
            raise ArtifactError(f"S3 get s3://{self.bucket}/{self.key(task_id, name)}: {exc}") from exc
        finally:
            body.close()
        return Artifact(data, reply.get("ContentType") or type_of(name))

    def url(self, task_id: str, name: str, expires: int) -> str | None:
        """A presigned GET URL valid ``expires`` seconds (made locally: no request)."""
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(task_id, name)}, ExpiresIn=int(expires)))

    def delete(self, task_id: str, name: str) -> None:
        """DELETE the object (S3 answers 204 for a missing one too). Raises ArtifactError."""
        self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=self.key(task_id, name))

    def delete_task(self, task_id: str) -> int:
        """List the task's objects and delete them, 1000 a request. Raises ArtifactError."""
        deleted = 0
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Bucket=self.bucket, Prefix=self.folder(task_id),
                              **token)
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._call("delete", self.client.delete_objects, Bucket=self.bucket,
                           Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
            if not page.get("IsTruncated"):
                return deleted
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def apply_lifecycle(self, days: int) -> dict[str, Any]:
        """Add (or replace) the rule :func:`lifecycle_rule` to the bucket's lifecycle configuration, keeping its
        other rules; returns the rule. Needs ``s3:GetLifecycleConfiguration`` and ``s3:PutLifecycleConfiguration``
        (an operator's credentials, not the workers'). Raises ArtifactError."""
        from botocore.exceptions import ClientError

        try:
            rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise ArtifactError(f"S3 get lifecycle of {self.bucket}: {exc}") from exc
            rules = []
        rule = lifecycle_rule(self.prefix, days)
        rules = [r for r in rules if r.get("ID") != LIFECYCLE_RULE_ID] + [rule]
        self._call("put lifecycle", self.client.put_bucket_lifecycle_configuration, Bucket=self.bucket,
                   LifecycleConfiguration={"Rules": rules})
        return rule
