"""The store's Lua scripts: read once from ``shared/store/lua/*.lua`` and registered with redis-py (as dramatiq
loads its ``.lua`` files next to its broker).

Each script is ``common.lua`` (shared helpers) followed by its own file; redis-py runs it with EVALSHA and loads it
again by itself after a server restart (``NOSCRIPT``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script


@cache
def source(name: str) -> str:
    """The text of script ``name`` (without ``.lua``), with ``common.lua`` in front.

    Raises:
        FileNotFoundError: no such script in the package.
    """
    folder = resources.files("shared.store") / "lua"
    common = (folder / "common.lua").read_text()
    return common + "\n" + (folder / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Scripts:
    """The registered scripts of one Redis client (see each file's header for its KEYS, ARGV and reply)."""

    apply: Script
    inject: Script
    claim: Script
    renew: Script
    release: Script
    requeue: Script
    resume: Script
    next_deferred: Script
    lock: Script
    take_delivery: Script
    hand_deliveries: Script
    spend: Script
    block: Script
    environment: Script
    takeover: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        """Register every script with ``client`` (no round trip until the first call)."""
        return cls(**{name: client.register_script(source(name)) for name in cls.__dataclass_fields__})
