"""Model providers' rate limits, shared by every worker: a registry entry's ``rpm`` and ``tpm`` (``shared/models.py``)
counted in Redis with the ``limits`` library on the store's own connection pool, and the "blocked until" a
provider's ``retry-after`` sets for everyone calling the same scope (``Keys.blocked``).

``rpm`` is a moving window (exact: one list entry per request); ``tpm`` a sliding window counter (two counters per
window, an approximation: a moving window would keep one list entry per token). Both count over
``Settings.provider_limit_window`` seconds (60 by default). Before a call a worker takes one request and the call's
estimated tokens (:meth:`ProviderLimits.acquire`); when they do not fit it takes nothing and waits.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import redis

from shared.models import ProviderLimit
from shared.settings import Settings
from shared.store.ids import now_ms
from shared.store.keys import Keys
from shared.store.scripts import Scripts

if TYPE_CHECKING:
    from limits import RateLimitItem

MIN_WAIT = 0.05
"""Seconds: the shortest wait :meth:`ProviderLimits.acquire` asks for."""


class ProviderLimits:
    """Provider rate limits. Reached as ``TaskStore.limits``. Thread-safe.

    Args:
        client: the store's Redis client (its connection pool serves the ``limits`` storage too).
        keys: the store's key names.
        settings: ``provider_limit_window``.
        scripts: the store's registered scripts.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, scripts: Scripts):
        self._redis = client
        self._keys = keys
        self._window = max(1, settings.provider_limit_window)
        self._scripts = scripts
        self._strategies: tuple[Any, Any] | None = None

    def _limiters(self) -> tuple[Any, Any]:
        """``(moving window, sliding window counter)`` limiters on the store's pool, made on first use."""
        if self._strategies is None:
            from limits.storage import RedisStorage
            from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

            storage = RedisStorage("redis://", connection_pool=self._redis.connection_pool,
                                   key_prefix=self._keys.limit_prefix)
            self._strategies = (MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage))
        return self._strategies

    def _item(self, amount: int | None) -> RateLimitItem | None:
        from limits import RateLimitItemPerSecond

        return RateLimitItemPerSecond(amount, self._window) if amount else None

    def _wait(self, limiter: Any, item: RateLimitItem, *ids: str) -> float:
        reset = limiter.get_window_stats(item, *ids).reset_time
        return min(float(self._window), max(MIN_WAIT, reset - time.time()))

    def blocked_for(self, scope: str) -> float:
        """Seconds until a provider's ``retry-after`` for ``scope`` has passed (0: not blocked)."""
        until = cast(bytes | None, self._redis.get(self._keys.blocked(scope)))
        return max(0.0, (int(until) - now_ms()) / 1000) if until else 0.0

    def block(self, scope: str, seconds: float) -> None:
        """Hold every caller of ``scope`` back for ``seconds`` (a provider's 429 with ``retry-after``), unless an
        earlier block holds them longer."""
        start = now_ms()
        self._scripts.block(keys=[self._keys.blocked(scope)], args=[start + int(seconds * 1000), start])

    def acquire(self, limit: ProviderLimit, tokens: int) -> tuple[float, str]:
        """Take one request and ``tokens`` tokens (capped at ``tpm``: a call bigger than the window takes all of
        it) from ``limit``'s windows: ``(0.0, "")`` when they fit; otherwise ``(seconds to wait, which)``, which is
        "retry-after", "rpm" or "tpm", and nothing is taken (but for a lost race between workers, where one
        request may be taken for nothing).

        Raises:
            redis.RedisError: Redis is unreachable.
        """
        blocked = self.blocked_for(limit.scope)
        if blocked > 0:
            return max(MIN_WAIT, blocked), "retry-after"
        if not (limit.rpm or limit.tpm):
            return 0.0, ""
        moving, sliding = self._limiters()
        rpm, tpm = self._item(limit.rpm), self._item(limit.tpm)
        cost = max(1, min(tokens, limit.tpm or tokens))
        if rpm is not None and not moving.test(rpm, limit.scope, "rpm"):
            return self._wait(moving, rpm, limit.scope, "rpm"), "rpm"
        if tpm is not None and not sliding.test(tpm, limit.scope, "tpm", cost=cost):
            return self._wait(sliding, tpm, limit.scope, "tpm"), "tpm"
        if rpm is not None and not moving.hit(rpm, limit.scope, "rpm"):
            return self._wait(moving, rpm, limit.scope, "rpm"), "rpm"
        if tpm is not None and not sliding.hit(tpm, limit.scope, "tpm", cost=cost):
            return self._wait(sliding, tpm, limit.scope, "tpm"), "tpm"
        return 0.0, ""

    def settle(self, limit: ProviderLimit, extra_tokens: int) -> None:
        """Count tokens a call used beyond its estimate against ``tpm`` (best effort: not counted when the window
        has no room left)."""
        if limit.tpm and extra_tokens > 0:
            tpm = self._item(limit.tpm)
            self._limiters()[1].hit(tpm, limit.scope, "tpm", cost=min(extra_tokens, limit.tpm))

    def limited(self, limit: ProviderLimit) -> bool:
        """Whether a call of ``limit`` would have to wait now (blocked, or a window full); takes nothing."""
        if self.blocked_for(limit.scope) > 0:
            return True
        if not (limit.rpm or limit.tpm):
            return False
        moving, sliding = self._limiters()
        rpm, tpm = self._item(limit.rpm), self._item(limit.tpm)
        return bool((rpm is not None and not moving.test(rpm, limit.scope, "rpm"))
                    or (tpm is not None and not sliding.test(tpm, limit.scope, "tpm")))
