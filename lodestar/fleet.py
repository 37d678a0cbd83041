"""A whole Lodestar deployment on one machine whose parts can be broken on purpose: its own Redis (append-only,
restartable on the same port), the API, and worker processes that each run in their own process group, so one can
be SIGKILLed or SIGTERMed like a machine or a container. Used by the fault tests and ``lodestar bench chaos``.

Workers may also run on other "hosts" (:class:`NetHost`): a network namespace of their own joined to this machine by
a veth pair, with their own hostname and data folder, that reach Redis and S3 over the pair's addresses only
(the multi-host test, ``tests/e2e/test_multihost.py``; needs root).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from lodestar.stack import RedisServer, free_port, local_secrets_key


class Fleet:
    """Redis + API + workers, each started and stopped on its own.

    Args:
        env: extra environment for every process (``LODESTAR_*`` settings); the Redis URL, API keys and kinds are
            set here.
        key: the API key (``LODESTAR_API_KEYS``).
        broker_url: ``LODESTAR_BROKER_URL`` (an ``amqp://`` URL for RabbitMQ; empty: Redis is the broker).
        kinds: ``LODESTAR_KINDS``.
        log_dir: where each process's output goes (one file each); default a temporary folder.
        redis_bind: the addresses Redis listens on, space-separated (add the :attr:`NetHost.gateway` of every host
            whose workers must reach it).
    """

    def __init__(self, env: dict[str, str] | None = None, key: str = "fleet-key", broker_url: str = "",
                 kinds: tuple[str, ...] = ("browser",), log_dir: Path | None = None, redis_bind: str = "127.0.0.1"):
        self.workdir = Path(tempfile.mkdtemp(prefix="lodestar-fleet-"))
        self.log_dir = log_dir or self.workdir
        self.redis = RedisServer(self.workdir / "redis", aof=True, bind=redis_bind)
        (self.workdir / "redis").mkdir()
        self.key = key
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.env = {**os.environ, "LODESTAR_SECRETS_KEY": local_secrets_key(self.workdir), **(env or {}),
                    "LODESTAR_REDIS_URL": self.redis.url, "LODESTAR_API_KEYS": key, "LODESTAR_KINDS": ",".join(kinds),
                    "LODESTAR_BROKER_URL": broker_url}
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs = 0

    # -- processes ---------------------------------------------------------------------------------------------------
    def _spawn(self, *args: str, env: dict[str, str] | None = None,
               host: NetHost | None = None) -> subprocess.Popen[bytes]:
        self._logs += 1
        name = f"{self._logs:02d}-{args[0]}" + (f"-{host.hostname}" if host else "")
        out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        argv = [sys.executable, "-m", "lodestar.cli", *args]
        return subprocess.Popen(host.command(argv) if host else argv, env={**self.env, **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, workers: int = 2, kind: str = "browser", concurrency: int = 1, timeout: float = 60) -> None:
        """Start Redis, the API and ``workers`` worker processes; returns once the API answers and every worker
        answers a Celery ping.

        Raises:
            RuntimeError: something did not come up within ``timeout`` seconds.
        """
        self.redis.start()
        self.start_api(timeout)
        for _ in range(workers):
            self.start_worker(kind, concurrency)
        self.wait_for_workers(workers, timeout)

    def start_api(self, timeout: float = 60) -> None:
        """Start the API process (again, after :meth:`stop_api`) and wait until ``/healthz`` answers."""
        self.api = self._spawn("api", "--host", "127.0.0.1", "--port", str(self.api_port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited with code {self.api.returncode} (logs in {self.log_dir})")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base_url}/healthz", timeout=1).ok:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the API did not answer within {timeout:.0f} s (logs in {self.log_dir})")

    def stop_api(self, sig: int = signal.SIGKILL) -> None:
        """Stop the API process (SIGKILL by default: a crash)."""
        if self.api is not None:
            _signal_group(self.api, sig)
            self.api.wait(30)
            self.api = None

    def start_worker(self, kind: str = "browser", concurrency: int = 1, env: dict[str, str] | None = None,
                     host: NetHost | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker process (its own process group), on ``host`` when given (``env`` then says how to
        reach Redis and S3 from there: :meth:`NetHost.env`); returns it."""
        if host is not None:
            env = {**host.env(), **(env or {})}
        proc = self._spawn("worker", "--kind", kind, "--concurrency", str(concurrency), env=env, host=host)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        """Wait until ``count`` workers answer a Celery ping. Raises RuntimeError after ``timeout`` seconds."""
        from shared.queue import make_celery
        from shared.settings import load_settings

        app = make_celery(load_settings({k: v for k, v in self.env.items() if k.startswith("LODESTAR_")}))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if len(app.control.ping(timeout=0.5) or []) >= count:
                    return
        finally:
            app.close()
        raise RuntimeError(f"fewer than {count} workers answered within {timeout:.0f} s (logs in {self.log_dir})")

    def worker_process(self, worker_id: str) -> subprocess.Popen[bytes]:
        """The worker process (as started by :meth:`start_worker`) whose pool process is ``worker_id``
        ("host:pid", a task's ``worker``)."""
        pid = int(worker_id.rsplit(":", 1)[1])
        group = os.getpgid(pid)
        for proc in self.workers:
            if proc.pid == group:
                return proc
        raise LookupError(f"no worker of this fleet runs process {pid}")

    def signal_worker(self, worker_id: str, sig: int, group: bool = True) -> subprocess.Popen[bytes]:
        """Send ``sig`` to the worker running ``worker_id``'s pool process: to its whole process group (what
        systemd's default and Kubernetes do), or to its main process only."""
        proc = self.worker_process(worker_id)
        if group:
            _signal_group(proc, sig)
        else:
            proc.send_signal(sig)
        return proc

    def restart_redis(self, outage: float = 5.0, crash: bool = False) -> None:
        """Stop Redis (SIGTERM, or SIGKILL with ``crash``), wait ``outage`` seconds, start it again on the same
        port and data (append-only file)."""
        self.redis.stop(kill=crash)
        time.sleep(outage)
        self.redis.start()

    def stop(self) -> None:
        """Stop everything (workers get SIGTERM, then SIGKILL after 15 s)."""
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        self.redis.stop()

    def http(self) -> requests.Session:
        """A session with the fleet's API key."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def chromium_pids(pid: int) -> list[int]:
    """Chromium processes anywhere below process ``pid`` (a worker's pool process: its browser), from /proc."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                names[int(entry.name)] = stat[stat.index("(") + 1:stat.rindex(")")]
                children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if "chrom" in names.get(child, ""):
                found.append(child)
    return found


@contextlib.contextmanager
def amqp_vhost(base: str, prefix: str = "lodestar") -> Iterator[str]:
    """``base`` (a RabbitMQ URL) with a fresh virtual host of its own, made and deleted with ``rabbitmqctl`` when it
    is on this machine (root), so a run never sees another's queues; else ``base`` as it is."""
    ctl = shutil.which("rabbitmqctl")
    if not ctl:
        yield base
        return
    parts = urllib.parse.urlsplit(base)
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    user = urllib.parse.unquote(parts.username or "guest")
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run([ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"], check=True, capture_output=True,
                   timeout=60)
    try:
        yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", ""))
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


class NetHost:
    """Another "machine" on this one: network namespace ``name`` joined to this host by a veth pair on the /30
    ``subnet`` (this host's end: :attr:`gateway`, the namespace's: :attr:`address`), with a hostname of its own for
    its processes (a UTS namespace: a worker's id names it) and a data folder of its own (HOME and TMPDIR). Its
    processes reach this machine only at :attr:`gateway` and at the addresses in ``routes`` (other hosts'
    gateways: addresses of this machine, so nothing is forwarded); this machine's loopback is out of reach.
    Needs root (``ip``, ``unshare``). :meth:`create` removes what a previous run left under the same names;
    :meth:`destroy` never raises.

    Args:
        name: the namespace's name (also the base of the hostname and of the veth names).
        subnet: a /30 of a private range of your own, e.g. "10.250.7.0/30", not used on this machine.
        workdir: its data folder (made here).
    """

    def __init__(self, name: str, subnet: str, workdir: Path):
        net = ipaddress.ip_network(subnet)
        if net.num_addresses != 4:
            raise ValueError(f"expected a /30, got {subnet}")
        self.name, self.subnet, self.workdir = name, str(net), workdir
        self.gateway, self.address = str(net[1]), str(net[2])
        self.hostname = f"lodestar-{name}"
        self.link = f"ls{uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:10]}"  # interface names: 15 characters at most

    def _ip(self, *args: str, netns: bool = False, check: bool = True) -> None:
        cmd = ["ip", "netns", "exec", self.name, "ip", *args] if netns else ["ip", *args]
        subprocess.run(cmd, check=check, capture_output=True, timeout=30)

    def create(self, routes: tuple[str, ...] = ()) -> None:
        """Make the namespace, the veth pair and its addresses, and routes to ``routes`` (networks or addresses
        of this machine) through :attr:`gateway`. Raises ``subprocess.CalledProcessError`` (no permission)."""
        self.destroy()
        for folder in ("home", "tmp"):
            (self.workdir / folder).mkdir(parents=True, exist_ok=True)
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.link, "type", "veth", "peer", "name", self.link + "p")
        self._ip("link", "set", self.link + "p", "netns", self.name)
        self._ip("addr", "add", f"{self.gateway}/30", "dev", self.link)
        self._ip("link", "set", self.link, "up")
        self._ip("addr", "add", f"{self.address}/30", "dev", self.link + "p", netns=True)
        self._ip("link", "set", self.link + "p", "up", netns=True)
        self._ip("link", "set", "lo", "up", netns=True)
        for route in routes:
            self._ip("route", "add", route, "via", self.gateway, netns=True)

    def destroy(self) -> None:
        """Delete the veth pair and the namespace (what is already gone is skipped)."""
        self._ip("link", "del", self.link, check=False)
        self._ip("netns", "del", self.name, check=False)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace under :attr:`hostname` (``ip netns exec`` and ``unshare`` exec the
        program: it keeps the process id, and the process group of a Popen with ``start_new_session``)."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]

    def env(self) -> dict[str, str]:
        """Its data folder: HOME and TMPDIR (Chromium's profiles and caches go there; Playwright's own browsers,
        when used, are still found where this machine's HOME keeps them)."""
        env = {"HOME": str(self.workdir / "home"), "TMPDIR": str(self.workdir / "tmp")}
        browsers = Path.home() / ".cache" / "ms-playwright"
        if "PLAYWRIGHT_BROWSERS_PATH" not in os.environ and browsers.is_dir():
            env["PLAYWRIGHT_BROWSERS_PATH"] = str(browsers)
        return env


def free_subnets(count: int, base: str = "10.250") -> list[str]:
    """``count`` /30 subnets of ``base``.x.0/24 networks (x from 64 to 191) that no interface of this machine uses."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    free = [f"{base}.{x}.0" for x in range(64, 192) if f" {base}.{x}." not in used]
    if not free:
        raise RuntimeError(f"no free {base}.x.0/24 network on this machine")
    network = ipaddress.ip_network(f"{free[uuid.uuid4().int % len(free)]}/24")
    return [str(sub) for sub in list(network.subnets(new_prefix=30))[:count]]


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
