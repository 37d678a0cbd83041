"""Signed, expiring URLs for artifacts: a link that opens one thing of one tenant until it expires, without the
bearer key (an ``<img src>`` in a page, a screenshot linked from a webhook, the console's share links).

A signed URL carries ``expires`` (epoch seconds) and ``sig``: the URL-safe base64 (no padding, 43 characters) of
HMAC-SHA256, keyed by the deployment's signing key, over ``"lodestar-url-v1\\n<tenant>\\n<resource>\\n<expires>"``.
``resource`` names what the link opens, e.g. ``screenshot:<task id>:<step>``, or ``share:<task id>`` (the read-only
console page of a task, its record and its events: :func:`share_resource`); the tenant is the owner's, read
from the task when the link is checked, so one tenant's link never opens another's task even with the same id
in the path. Example::

    https://lodestar.example.com/agent/tasks/task_x/screenshots/3?expires=1795276800&sig=Xk...Q

The key is ``LODESTAR_URL_SIGNING_KEY`` when set (at least 32 characters). Otherwise the first process that needs
one generates 32 random bytes and keeps them in Redis (``TaskStore.url_signing_key``): every API replica and worker
then signs alike, and links survive restarts; anyone who can read Redis can mint links (they can read the
screenshots there anyway), so production deployments set their own key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.settings import Settings

if TYPE_CHECKING:
    from shared.store import TaskStore
    from shared.task import Task

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 32
"""Shortest ``LODESTAR_URL_SIGNING_KEY`` accepted."""
EXPIRY_ROUNDING = 60
"""Seconds expiries are rounded up to, so a task's screenshot URL stays the same for a minute (browsers cache it)."""
EXPIRES_PATTERN = "^[0-9]{1,12}$"
"""A signed URL's ``expires`` (epoch seconds)."""
SIG_PATTERN = "^[A-Za-z0-9_-]{43}$"
"""A signed URL's ``sig`` (URL-safe base64 of 32 bytes, no padding)."""
_warned = False  # the generated-key warning, once per process


def check_settings(settings: Settings) -> None:
    """Raises ValueError (naming the variable) for an unusable ``url_signing_key`` or ``url_ttl``."""
    if settings.url_signing_key and len(settings.url_signing_key) < MIN_KEY_CHARS:
        raise ValueError(f"LODESTAR_URL_SIGNING_KEY: use at least {MIN_KEY_CHARS} characters (e.g. the output of "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    if settings.url_ttl < 1:
        raise ValueError("LODESTAR_URL_TTL: must be at least 1 second")


class UrlSigner:
    """Signs and checks URLs with one key. Thread-safe.

    Args:
        key: the secret, or a callable returning it, called once on first use (the key kept in Redis is read
            only when a URL is first signed or checked; a ``redis.RedisError`` then propagates).
        ttl: seconds a URL is valid for, at least (its expiry is rounded up to :data:`EXPIRY_ROUNDING`).
        clock: epoch seconds now (tests).
    """

    def __init__(self, key: bytes | Callable[[], bytes], ttl: int, clock: Callable[[], float] = time.time):
        self._key: bytes | None = key if isinstance(key, bytes) else None
        self._load = None if isinstance(key, bytes) else key
        self._lock = threading.Lock()
        self.ttl = ttl
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, store: TaskStore) -> UrlSigner:
        """The deployment's signer: ``LODESTAR_URL_SIGNING_KEY``, else the key kept in Redis (generated once; a
        warning says so, once per process)."""
        if settings.url_signing_key:
            return cls(settings.url_signing_key.encode(), settings.url_ttl)

        def generated() -> bytes:
            global _warned
            if not _warned:
                _warned = True
                log.warning("LODESTAR_URL_SIGNING_KEY is not set: screenshot URLs are signed with a key generated "
                            "once and kept in Redis (%s); set your own key in production",
                            store.keys.url_signing_key)
            return store.url_signing_key()

        return cls(generated, settings.url_ttl)

    @property
    def key(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    assert self._load is not None
                    self._key = self._load()
        return self._key

    def expiry(self) -> int:
        """The ``expires`` of a URL signed now: now + ``ttl``, rounded up to the next minute (epoch seconds)."""
        return math.ceil((self.clock() + self.ttl) / EXPIRY_ROUNDING) * EXPIRY_ROUNDING

    def signature(self, tenant: str, resource: str, expires: int) -> str:
        """The ``sig`` of ``resource`` of ``tenant`` until ``expires``: URL-safe base64 of the HMAC, 43 chars."""
        message = f"lodestar-url-v1\n{tenant}\n{resource}\n{expires}".encode()
        digest = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def query(self, tenant: str, resource: str, expires: int | None = None) -> str:
        """``"expires=<epoch s>&sig=<signature>"`` for a URL opening ``resource`` (expiry: :meth:`expiry`)."""
        expires = self.expiry() if expires is None else expires
        return f"expires={expires}&sig={self.signature(tenant, resource, expires)}"

    def refusal(self, tenant: str | None, resource: str, expires: str | None, sig: str | None) -> str | None:
        """Why a URL's ``expires`` and ``sig`` do not open ``resource`` of ``tenant`` (None: they do). ``tenant``
        None: the resource does not exist, which is answered like a bad signature (a link reveals nothing)."""
        if not expires or not sig or not re.fullmatch(EXPIRES_PATTERN, expires) or not re.fullmatch(SIG_PATTERN, sig):
            return "malformed link: expires and sig are missing or malformed"
        if tenant is None or not hmac.compare_digest(self.signature(tenant, resource, int(expires)), sig):
            return "invalid link signature"
        if int(expires) < self.clock():
            return "this link has expired; fetch the task again for a fresh one"
        return None

    def screenshot_urls(self, base_url: str, not_after: int | None = None) -> Callable[[Task, int], str]:
        """The ``screenshot_url(task, step)`` maker for ``Task.to_json``: the step's screenshot URL under
        ``base_url``, signed for the task's tenant (``resource`` from :func:`screenshot_resource`), expiring at
        :meth:`expiry` or at ``not_after`` (epoch seconds) if that comes first: what is seen through a share link
        expires with the link."""
        base = base_url.rstrip("/")

        def url(task: Task, step: int) -> str:
            expires = self.expiry() if not_after is None else min(self.expiry(), not_after)
            query = self.query(task.tenant, screenshot_resource(task.task_id, step), expires)
            return f"{base}/agent/tasks/{task.task_id}/screenshots/{step}?{query}"

        return url


def screenshot_resource(task_id: str, step: int) -> str:
    """The signed ``resource`` of a step's screenshot: ``"screenshot:<task id>:<step>"``."""
    return f"screenshot:{task_id}:{step}"


def share_resource(task_id: str) -> str:
    """The signed ``resource`` of a share link: ``"share:<task id>"`` (the task's console page, record and events,
    read-only)."""
    return f"share:{task_id}"
