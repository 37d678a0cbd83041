"""Tenants and their API keys as the API sees them: who a key acts for (``Principal``), key digests, and the
per-tenant request rate limit. Stored keys and tenant settings live in Redis behind ``shared.store.tenants``.

Keys come from two places: ``LODESTAR_API_KEYS`` (each its own tenant, "t_" + 16 hex digits of its SHA-256; handy
for development and ``lodestar up``) and keys created with ``lodestar keys create`` (stored as SHA-256 digests,
grouped in tenants). A key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "ls_"
log = logging.getLogger(__name__)


def digest(key: str) -> str:
    """SHA-256 hex digest of an API key (what Redis stores)."""
    return hashlib.sha256(key.encode()).hexdigest()


def env_tenant(key: str) -> str:
    """The tenant id of a ``LODESTAR_API_KEYS`` key: "t_" + the first 16 hex digits of its SHA-256."""
    return "t_" + digest(key)[:16]


@dataclass(frozen=True)
class Principal:
    """Who a request acts for. Limits: 0 means none; ``rate_limit`` in the ``limits`` library's notation
    ("20/second;1000/minute"), "" for none; ``daily_budget_usd``: USD the tenant's model calls may cost per UTC
    day."""

    tenant: str
    key_id: str
    name: str
    max_queued: int
    max_running: int
    rate_limit: str
    webhook_url: str | None = None
    daily_budget_usd: float = 0.0


def check_rate_limit(spec: str | None) -> None:
    """Raise ValueError unless ``spec`` is None, "" or valid ``limits`` notation ("20/second;1000/minute")."""
    if spec:
        from limits import parse_many

        try:
            parse_many(spec)
        except ValueError as exc:
            raise ValueError(f"rate limit {spec!r}: {exc}") from None


class RateLimiter:
    """Per-tenant request rate limits, shared by every API replica: the ``limits`` library's moving window on
    Redis (what flask-limiter runs on), checked only for tenants that have a limit, so requests of the others
    cost nothing here (flask-limiter spent ~0.26 ms of each request deciding that a tenant was exempt).

    Args:
        redis_url: the Redis the windows live in (``limits``' ``redis://`` storage URI).
        key_prefix: prefix of the window keys.
    """

    def __init__(self, redis_url: str, key_prefix: str):
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self._limiter = MovingWindowRateLimiter(storage_from_string(redis_url))
        self._prefix = key_prefix
        self._parsed: dict[str, list[Any]] = {}

    def retry_after(self, tenant: str, spec: str) -> int:
        """Count one request of ``tenant`` against ``spec`` ("N/second;M/minute"...); returns 0 when it is
        allowed, else the whole seconds until the window has room again.

        A ``spec`` that is not valid notation (stored before specs were checked) is logged and not applied.

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        from limits import parse_many

        items = self._parsed.get(spec)
        if items is None:
            try:
                items = parse_many(spec)
            except ValueError as exc:  # stored before specs were checked: no limit, said once per spec
                log.error("tenant %s: ignoring rate limit %r: %s", tenant, spec, exc)
                items = []
            self._parsed[spec] = items
        for item in items:
            if not self._limiter.hit(item, self._prefix, tenant):
                reset = self._limiter.get_window_stats(item, self._prefix, tenant).reset_time
                return max(1, int(reset - time.time() + 0.999))
        return 0
