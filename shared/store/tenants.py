"""Stored API keys and tenant settings in Redis (``Keys.apikey``, ``Keys.apikeys``, ``Keys.tenant``).

A stored key is kept as its SHA-256 digest only; the key itself is shown once, at creation. Keys from
``LODESTAR_API_KEYS`` are not stored: each is its own tenant (``shared.tenants.env_tenant``).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from typing import Any, cast

import redis

from shared.netguard import clean_domain_patterns
from shared.settings import Settings
from shared.store.keys import Keys
from shared.tenants import KEY_PREFIX, Principal, check_rate_limit, digest, env_tenant

TENANT_LIMITS = ("max_queued", "max_running", "rate_limit", "webhook_url", "allowed_domains",
                 "daily_budget_usd")
"""Tenant settings an operator sets (``lodestar keys limits``)."""


def _domains_value(value: str | list[str] | tuple[str, ...], most: int) -> str:
    """``allowed_domains`` as stored in the tenant hash: the cleaned patterns, comma-separated ("" for none).

    Raises:
        ValueError: a bad pattern (named), or more than ``most`` of them.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    patterns = clean_domain_patterns(p.strip() for p in items if p.strip())
    if len(patterns) > most:
        raise ValueError(f"allowed_domains: {len(patterns)} patterns, at most {most} (LODESTAR_MAX_ALLOWED_DOMAINS)")
    return ",".join(patterns)


class Tenants:
    """Create, list, revoke and resolve API keys; read and set tenant settings. Thread-safe.

    ``resolve`` caches answers for ``cache_seconds`` (default 5 s): a revoked key stops working within that time.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: the defaults of tenant limits (``default_max_queued`` ...) and the ``LODESTAR_API_KEYS``.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, cache_seconds: float = 5.0):
        self._redis = client
        self._keys = keys
        self.settings = settings
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()
        self.cache_seconds = cache_seconds

    # -- administration ------------------------------------------------------------------------------------------
    def create_key(self, name: str, tenant: str | None = None, *, max_queued: int | None = None,
                   max_running: int | None = None, rate_limit: str | None = None,
                   webhook_url: str | None = None, allowed_domains: str | list[str] | None = None,
                   daily_budget_usd: float | None = None) -> tuple[str, Principal]:
        """Create a key (for a new tenant unless ``tenant`` names one); returns ``(key, principal)``.

        Limits given here are stored on the tenant (they apply to all its keys); ``allowed_domains`` is a list of
        patterns or one comma-separated string (``shared.netguard.clean_domain_patterns``).

        Raises:
            ValueError: ``rate_limit`` is not rate-limit notation, a bad ``allowed_domains`` pattern, or
                ``daily_budget_usd`` is negative.
        """
        check_rate_limit(rate_limit)
        domains = None if allowed_domains is None else _domains_value(allowed_domains,
                                                                       self.settings.max_allowed_domains)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        d = digest(key)
        tenant = tenant or "t_" + secrets.token_hex(8)
        tenant_key = self._keys.tenant(tenant)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._keys.apikey(d), mapping={"tenant": tenant, "name": name, "created_at": time.time(),
                                                 "key_id": d[:12], "revoked": "0"})
        pipe.sadd(self._keys.apikeys, d)
        pipe.hsetnx(tenant_key, "name", name)
        pipe.hsetnx(tenant_key, "webhook_secret", "whsec_" + secrets.token_urlsafe(32))
        if daily_budget_usd is not None and not 0 <= daily_budget_usd < float("inf"):
            raise ValueError(f"daily budget {daily_budget_usd!r}: expected USD >= 0 (0: no budget)")
        updates = {"max_queued": max_queued, "max_running": max_running, "rate_limit": rate_limit,
                   "webhook_url": webhook_url, "allowed_domains": domains, "daily_budget_usd": daily_budget_usd}
        for field, value in updates.items():
            if value is not None:
                pipe.hset(tenant_key, field, value)
        pipe.execute()
        principal = self.resolve(key, use_cache=False)
        assert principal is not None
        return key, principal

    def list_keys(self) -> list[dict[str, Any]]:
        """Every stored key: ``key_id`` (first 12 hex digits of its digest), name, tenant, created_at, revoked."""
        digests = sorted(d.decode() for d in cast(set[bytes], self._redis.smembers(self._keys.apikeys)))
        pipe = self._redis.pipeline(transaction=False)
        for d in digests:
            pipe.hgetall(self._keys.apikey(d))
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
        digests = [d.decode() for d in cast(set[bytes], self._redis.smembers(self._keys.apikeys))]
        matches = [d for d in digests if d.startswith(key_id)]
        if len(matches) != 1:
            return False
        self._redis.hset(self._keys.apikey(matches[0]), "revoked", "1")
        with self._lock:
            self._cache.clear()
        return True

    def set_limits(self, tenant: str, **limits: Any) -> None:
        """Set tenant settings (:data:`TENANT_LIMITS`); None values are skipped. ``allowed_domains`` is a list of
        patterns or one comma-separated string; "" (or []) removes the tenant's restriction.

        Raises:
            ValueError: ``rate_limit`` is not rate-limit notation, a bad ``allowed_domains`` pattern, or
                ``daily_budget_usd`` is negative.
            TypeError: a name that is not a tenant setting.
        """
        unknown = set(limits) - set(TENANT_LIMITS)
        if unknown:
            raise TypeError(f"not tenant settings: {', '.join(sorted(unknown))}")
        check_rate_limit(limits.get("rate_limit"))
        if limits.get("allowed_domains") is not None:
            limits["allowed_domains"] = _domains_value(limits["allowed_domains"], self.settings.max_allowed_domains)
        budget = limits.get("daily_budget_usd")
        if budget is not None and not (isinstance(budget, int | float) and 0 <= budget < float("inf")):
            raise ValueError(f"daily budget {budget!r}: expected USD >= 0 (0: no budget)")
        values = {k: v for k, v in limits.items() if v is not None}
        if values:
            self._redis.hset(self._keys.tenant(tenant), mapping=values)  # type: ignore[arg-type]

    # -- resolution --------------------------------------------------------------------------------------------------
    def resolve(self, key: str, use_cache: bool = True) -> Principal | None:
        """The principal of a bearer key, or None when it is unknown or revoked.

        Raises:
            redis.RedisError: Redis is unreachable (and the answer is not cached).
        """
        if use_cache:
            with self._lock:
                hit = self._cache.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1]
        principal = self._resolve(key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + self.cache_seconds, principal)
        return principal

    def _resolve(self, key: str) -> Principal | None:
        for known in self.settings.api_keys:
            if hmac.compare_digest(key.encode(), known.encode()):
                tenant = env_tenant(key)
                return self._principal(tenant, tenant[2:14], "env")
        raw = cast(dict[bytes, bytes], self._redis.hgetall(self._keys.apikey(digest(key))))
        if not raw or raw.get(b"revoked") == b"1":
            return None
        return self._principal(raw[b"tenant"].decode(), raw[b"key_id"].decode(), raw[b"name"].decode())

    def _principal(self, tenant: str, key_id: str, name: str) -> Principal:
        info = self.tenant(tenant)
        return Principal(tenant, key_id, name, info["max_queued"], info["max_running"], info["rate_limit"],
                         info.get("webhook_url"), info["daily_budget_usd"])

    def tenant(self, tenant: str) -> dict[str, Any]:
        """Tenant settings merged with the defaults from settings: ``{tenant, name, max_queued, max_running,
        rate_limit, webhook_url, allowed_domains, daily_budget_usd}`` (limits 0: none; ``allowed_domains`` a list, []
        for none)."""
        raw = {k.decode(): v.decode() for k, v in
               cast(dict[bytes, bytes], self._redis.hgetall(self._keys.tenant(tenant))).items()}
        return {"tenant": tenant, "name": raw.get("name", tenant),
                "max_queued": int(raw.get("max_queued") or self.settings.default_max_queued),
                "max_running": int(raw.get("max_running") or self.settings.default_max_running),
                "rate_limit": raw.get("rate_limit", self.settings.default_rate_limit),
                "webhook_url": raw.get("webhook_url") or None,
                "allowed_domains": [p for p in raw.get("allowed_domains", "").split(",") if p],
                "daily_budget_usd": float(raw.get("daily_budget_usd") or self.settings.default_daily_budget_usd)}

    def webhook_secret(self, tenant: str) -> str:
        """The tenant's webhook signing secret, created on first use."""
        key = self._keys.tenant(tenant)
        self._redis.hsetnx(key, "webhook_secret", "whsec_" + secrets.token_urlsafe(32))
        return cast(bytes, self._redis.hget(key, "webhook_secret")).decode()
