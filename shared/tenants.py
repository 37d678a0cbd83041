"""Tenants and their API keys: keys stored hashed in Redis, per-tenant limits, webhook signing secrets.

Keys come from two places: ``LODESTAR_API_KEYS`` (each its own tenant, "t_" + 16 hex digits of its SHA-256; handy
for development and ``lodestar up``) and keys created with ``lodestar keys create`` (stored as SHA-256 digests in
``P:apikey:{digest}``, grouped in tenants ``P:tenant:{id}``). A key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from shared.store import TaskStore, now

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
    ("20/second;1000/minute"), "" for none."""

    tenant: str
    key_id: str
    name: str
    max_queued: int
    max_running: int
    rate_limit: str
    webhook_url: str | None = None


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


class Tenants:
    """Create, list, revoke and resolve API keys; read tenant settings. Thread-safe.

    ``resolve`` caches answers for ``cache_seconds`` (default 5 s): a revoked key stops working within that time.
    """

    def __init__(self, store: TaskStore, cache_seconds: float = 5.0):
        self.store = store
        self.settings = store.settings
        self.prefix = store.prefix
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()
        self._cache_seconds = cache_seconds

    def _key(self, d: str) -> str:
        return f"{self.prefix}:apikey:{d}"

    def tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}"

    # -- administration ------------------------------------------------------------------------------------------
    def create_key(self, name: str, tenant: str | None = None, *, max_queued: int | None = None,
                   max_running: int | None = None, rate_limit: str | None = None,
                   webhook_url: str | None = None) -> tuple[str, Principal]:
        """Create a key (for a new tenant unless ``tenant`` names one); returns ``(key, principal)``.

        Limits given here are stored on the tenant (they apply to all its keys).

        Raises:
            ValueError: ``rate_limit`` is not rate-limit notation.
        """
        check_rate_limit(rate_limit)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        d = digest(key)
        tenant = tenant or "t_" + secrets.token_hex(8)
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(self._key(d), mapping={"tenant": tenant, "name": name, "created_at": now(), "key_id": d[:12],
                                         "revoked": "0"})
        pipe.sadd(f"{self.prefix}:apikeys", d)
        pipe.hsetnx(self.tenant_key(tenant), "name", name)
        pipe.hsetnx(self.tenant_key(tenant), "webhook_secret", "whsec_" + secrets.token_urlsafe(32))
        updates = {"max_queued": max_queued, "max_running": max_running, "rate_limit": rate_limit,
                   "webhook_url": webhook_url}
        for field, value in updates.items():
            if value is not None:
                pipe.hset(self.tenant_key(tenant), field, value)
        pipe.execute()
        principal = self.resolve(key, use_cache=False)
        assert principal is not None
        return key, principal

    def list_keys(self) -> list[dict[str, Any]]:
        """Every stored key: ``key_id`` (first 12 hex digits of its digest), name, tenant, created_at, revoked."""
        digests = sorted(d.decode() for d in cast(set[bytes], self.store.redis.smembers(f"{self.prefix}:apikeys")))
        pipe = self.store.redis.pipeline(transaction=False)
        for d in digests:
            pipe.hgetall(self._key(d))
        rows = []
        for raw in pipe.execute():
            if raw:
                row = {k.decode(): v.decode() for k, v in raw.items()}
                row["revoked"] = row.get("revoked") == "1"
                row["created_at"] = float(row.get("created_at") or 0)
                rows.append(row)
        return sorted(rows, key=lambda r: r["created_at"])

    def revoke(self, key_id: str) -> bool:
        """Revoke the key whose id (or a unique prefix of its digest, >= 8 characters) is ``key_id``."""
        if len(key_id) < 8:
            return False
        digests = [d.decode() for d in cast(set[bytes], self.store.redis.smembers(f"{self.prefix}:apikeys"))]
        matches = [d for d in digests if d.startswith(key_id)]
        if len(matches) != 1:
            return False
        self.store.redis.hset(self._key(matches[0]), "revoked", "1")
        with self._lock:
            self._cache.clear()
        return True

    def set_limits(self, tenant: str, **limits: Any) -> None:
        """Set tenant settings (max_queued, max_running, rate_limit, webhook_url); None values are skipped.

        Raises:
            ValueError: ``rate_limit`` is not rate-limit notation.
        """
        check_rate_limit(limits.get("rate_limit"))
        values = {k: v for k, v in limits.items() if v is not None}
        if values:
            self.store.redis.hset(self.tenant_key(tenant), mapping=values)  # type: ignore[arg-type]

    # -- resolution --------------------------------------------------------------------------------------------------
    def resolve(self, key: str, use_cache: bool = True) -> Principal | None:
        """The principal of a bearer key, or None when it is unknown or revoked."""
        if use_cache:
            with self._lock:
                hit = self._cache.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1]
        principal = self._resolve(key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + self._cache_seconds, principal)
        return principal

    def _resolve(self, key: str) -> Principal | None:
        for known in self.settings.api_keys:
            if hmac.compare_digest(key.encode(), known.encode()):
                tenant = env_tenant(key)
                return self._principal(tenant, tenant[2:14], "env")
        raw = cast(dict[bytes, bytes], self.store.redis.hgetall(self._key(digest(key))))
        if not raw or raw.get(b"revoked") == b"1":
            return None
        return self._principal(raw[b"tenant"].decode(), raw[b"key_id"].decode(), raw[b"name"].decode())

    def _principal(self, tenant: str, key_id: str, name: str) -> Principal:
        info = self.tenant(tenant)
        return Principal(tenant, key_id, name, info["max_queued"], info["max_running"], info["rate_limit"],
                         info.get("webhook_url"))

    def tenant(self, tenant: str) -> dict[str, Any]:
        """Tenant settings merged with the defaults from settings."""
        raw = {k.decode(): v.decode() for k, v in
               cast(dict[bytes, bytes], self.store.redis.hgetall(self.tenant_key(tenant))).items()}
        info: dict[str, Any] = {"tenant": tenant, "name": raw.get("name", tenant),
                                "max_queued": int(raw.get("max_queued") or self.settings.default_max_queued),
                                "max_running": int(raw.get("max_running") or self.settings.default_max_running),
                                "rate_limit": raw.get("rate_limit", self.settings.default_rate_limit),
                                "webhook_url": raw.get("webhook_url") or None}
        return info

    def webhook_secret(self, tenant: str) -> str:
        """The tenant's webhook signing secret, created on first use."""
        self.store.redis.hsetnx(self.tenant_key(tenant), "webhook_secret", "whsec_" + secrets.token_urlsafe(32))
        return cast(bytes, self.store.redis.hget(self.tenant_key(tenant), "webhook_secret")).decode()

