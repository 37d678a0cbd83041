"""A real API process (gunicorn, gevent) with no worker, on Redis database 13, for tests that need the server
itself: body limits enforced before the body is read, the fuzzer against ``/openapi.json``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import redis as redis_lib

from lodestar.stack import Stack, free_port
from tests.conftest import KEY, OTHER_KEY, need


@dataclass(frozen=True)
class ApiProcess:
    base_url: str
    redis_url: str
    port: int
    key: str = KEY
    other_key: str = OTHER_KEY


@contextlib.contextmanager
def api_process(redis_base: str, extra_env: dict[str, str] | None = None) -> Iterator[ApiProcess]:
    """Start ``lodestar api`` alone (``Stack.start(workers=False)``) on a flushed database 13; stop it after."""
    redis_url = f"{redis_base}/13"
    client = redis_lib.Redis.from_url(redis_url)
    try:
        client.flushdb()
    except redis_lib.ConnectionError:
        need(False, f"Redis at {redis_base} is not reachable")
    port = free_port()
    env = {**os.environ, "LODESTAR_REDIS_URL": redis_url, "LODESTAR_API_KEYS": f"{KEY},{OTHER_KEY}",
           "LODESTAR_KINDS": "browser", **(extra_env or {})}
    stack = Stack(env, port, 1, quiet=not os.environ.get("LODESTAR_TEST_VERBOSE"))
    try:
        stack.start(workers=False)
        yield ApiProcess(f"http://127.0.0.1:{port}", redis_url, port)
    finally:
        stack.stop()
        client.flushdb()
