"""The egress proxy of a worker process: proxy.py's HTTP proxy, run in this process, with :class:`EgressPlugin`.

proxy.py (https://github.com/abhinavsingh/proxy.py, BSD) parses HTTP/1.1 requests in absolute form and CONNECT, and
relays bodies, responses and tunnels. Its own server starts acceptor processes; here each :class:`~worker.egress.gate.
Gate` accepts on its own port and hands each connection to proxy.py's ``HttpProtocolHandler`` on a thread of this
process (proxy.py's "threaded" mode), so the rules and the refusals stay in memory and the proxy dies with the worker.

The plugin checks every request and every CONNECT (HTTPS, and WebSockets, which Chromium always tunnels) against
the connection's gate (:meth:`Gate.decide`), answers a refusal with 403 (Chromium shows our text for a plain-HTTP
page, and ``ERR_TUNNEL_CONNECTION_FAILED`` for a tunnel), and otherwise makes proxy.py connect to the address the
verdict names (``resolve_dns``), never to a second DNS answer. TLS is not intercepted.

proxy.py sends every later request of a kept-alive client connection to the upstream of the first one; so a
plain-HTTP connection carries one request: it goes upstream with ``Connection: close`` and its response comes back
with ``Connection: close`` added, and a later request on the same connection for another host closes it unanswered.
HTTPS tunnels keep their connections alive as usual.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
from typing import Any

import proxy.http.handler as proxy_handler
from proxy.common.flag import FlagParser
from proxy.http.connection import HttpClientConnection
from proxy.http.exception import HttpRequestRejected
from proxy.http.handler import HttpProtocolHandler
from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin

from shared.netguard import normalize_host
from shared.settings import Settings
from worker.egress.gate import Gate
from worker.egress.rules import EgressPolicy, Resolver

log = logging.getLogger(__name__)

IDLE_TICK = 1.0
"""Seconds proxy.py's threaded handler waits in select() before it looks at a connection again (its default is 25 ms,
for its inactivity check). Data, a close or a gate's cut wake it at once either way; measured with 20 idle tunnels,
1 s costs 0.3% of a core against 7% at 25 ms."""
proxy_handler.DEFAULT_SELECTOR_SELECT_TIMEOUT = IDLE_TICK  # read at each select() of handler.py (proxy.py 2.4)

BYPASS_NOTHING = "<-loopback>"
"""Chromium's proxy bypass rule that removes its implicit bypass of localhost and loopback addresses, so that they
too go through the proxy (Chromium bypasses nothing else unless told to)."""


def chromium_proxy_args(url: str) -> list[str]:
    """Chromium flags sending every request (http, https, ws, wss; loopback included) to the proxy at ``url``, and
    WebRTC only through it (no UDP of its own: ``disable_non_proxied_udp``)."""
    return [f"--proxy-server={url}", f"--proxy-bypass-list={BYPASS_NOTHING}",
            "--webrtc-ip-handling-policy=disable_non_proxied_udp"]


def proxy_env(url: str) -> dict[str, str]:
    """Environment variables that send a desktop program's HTTP(S) through the proxy at ``url`` (both spellings:
    curl reads the lower-case ``http_proxy`` only; ``no_proxy`` empty, so nothing bypasses it)."""
    return {"http_proxy": url, "https_proxy": url, "HTTP_PROXY": url, "HTTPS_PROXY": url, "all_proxy": url,
            "ALL_PROXY": url, "no_proxy": "", "NO_PROXY": ""}


class _GatedClient(HttpClientConnection):
    """A client connection, with the gate it arrived on and the generation of that gate's rules at the time."""

    def __init__(self, conn: socket.socket, addr: Any, gate: Gate, generation: int):
        super().__init__(conn, addr)
        self.gate = gate
        self.generation = generation


class EgressPlugin(HttpProxyBasePlugin):
    """proxy.py plugin (one instance per client connection): the gate's verdict on each request; connects to the
    checked address."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._address: str | None = None
        self._target: tuple[str, int | None] | None = None
        self._closing = False
        self._head = b""

    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        """Refuse (403) or remember the address to connect to. Raises ``HttpRequestRejected`` for a refusal."""
        client = self.client
        assert isinstance(client, _GatedClient)
        host = (request.host or b"").decode("latin-1")
        port = request.port
        method = (request.method or b"").decode("latin-1")
        url = _url_of(request, host, port)
        verdict = client.gate.decide(host, port, client.generation)
        if verdict.address is None:
            reason = verdict.reason or "refused"
            client.gate.refuse(method, url, host, port, reason, client.generation)
            raise HttpRequestRejected(
                status_code=403, reason=b"Forbidden",
                headers={b"Content-Type": b"text/plain; charset=utf-8", b"Connection": b"close",
                         b"X-Lodestar-Egress": b"refused"},
                body=f"Lodestar's egress filter refused {url}: {reason}\n".encode())
        self._address = verdict.address
        self._target = (normalize_host(host), port)
        if not request.is_https_tunnel and not request.is_connection_upgrade:
            request.del_header(b"Keep-Alive")
            request.add_header(b"Connection", b"close")
            self._closing = True
        return request

    def handle_upstream_chunk(self, chunk: memoryview) -> memoryview | None:
        """Add ``Connection: close`` after the status line of a plain-HTTP response, so the client opens a new
        connection for its next request (holding bytes back until the status line is complete)."""
        if not self._closing:
            return chunk
        self._head += chunk.tobytes()
        end = self._head.find(b"\r\n")
        if end < 0 and len(self._head) < 65536:
            return None
        head, self._head, self._closing = self._head, b"", False
        if end < 0:
            return memoryview(head)
        return memoryview(head[:end + 2] + b"Connection: close\r\n" + head[end + 2:])

    def resolve_dns(self, host: str, port: int) -> tuple[str | None, Any]:
        """The checked address (proxy.py connects to it instead of resolving ``host`` again)."""
        return self._address, None

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        """Called for every request of the connection; proxy.py would send a later one to the first one's upstream,
        so one for another host closes the connection (the client retries on a new one)."""
        if self._target is not None and (normalize_host((request.host or b"").decode("latin-1")),
                                         request.port) != self._target:
            raise HttpRequestRejected()
        return request

    def on_access_log(self, context: dict[str, Any]) -> dict[str, Any] | None:
        """Silence proxy.py's access log (refusals are logged by the gate)."""
        return None


def _url_of(request: HttpParser, host: str, port: int | None) -> str:
    """The URL of a proxied request as the client wrote it ("host:port" for a CONNECT tunnel)."""
    authority = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if request.is_https_tunnel:
        return f"{authority}:{port}"
    path = (request.path or b"/").decode("latin-1")
    return f"http://{authority}{'' if port == 80 else f':{port}'}{path}"


def _flags(idle_timeout: float, workdir: str) -> argparse.Namespace:
    """proxy.py's options: threaded, our plugin, its data and cache folders in ``workdir``. Its start-up calls
    ``logging.basicConfig``, which would configure the root logger of a process that has not: undone here."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return FlagParser.initialize(
            ["--threaded", "--num-acceptors", "1", "--timeout", str(max(1, math.ceil(idle_timeout))),
             "--log-level", "WARNING", "--data-dir", workdir, "--cache-dir", os.path.join(workdir, "cache")],
            plugins=[EgressPlugin])
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        logging.getLogger("proxy").setLevel(logging.ERROR)  # refusals and unreachable upstreams are expected


class EgressProxy:
    """The egress proxy of one worker process: hands out gates (one port each) that share proxy.py's options; each
    gate applies the policy it was made with (its host's settings). Thread-safe.

    Args:
        policy: the policy of gates made without one (default: :class:`EgressPolicy`'s defaults).
        idle_timeout: seconds a proxied connection may stay silent (``LODESTAR_EGRESS_IDLE_TIMEOUT``).
    """

    def __init__(self, policy: EgressPolicy | None = None, idle_timeout: float = 300.0):
        self.policy = policy or EgressPolicy()
        self._workdir = tempfile.mkdtemp(prefix="lodestar-egress-")
        self._flags = _flags(idle_timeout, self._workdir)
        self._gates: list[Gate] = []
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver | None = None) -> EgressProxy:
        """The proxy for ``settings`` (``resolver``: tests' own name resolution).

        Raises:
            ValueError: a malformed ``LODESTAR_EGRESS_HOSTS`` entry.
        """
        return cls(EgressPolicy.from_settings(settings, resolver), settings.egress_idle_timeout)

    def gate(self, policy: EgressPolicy | None = None) -> Gate:
        """A new gate on a free port of 127.0.0.1 applying ``policy`` (default: the proxy's), closed until
        :meth:`Gate.open`."""
        gate = Gate(policy or self.policy, self._serve)
        with self._lock:
            self._gates = [g for g in self._gates if not g.closed] + [gate]
        return gate

    def close(self) -> None:
        """Close every gate and remove proxy.py's folder."""
        with self._lock:
            gates, self._gates = self._gates, []
        for gate in gates:
            gate.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _serve(self, conn: socket.socket, addr: Any, gate: Gate, generation: int) -> None:
        handler = HttpProtocolHandler(_GatedClient(conn, addr, gate, generation), flags=self._flags)

        def run() -> None:
            try:
                handler.run()
            finally:
                gate.forget(conn)

        threading.Thread(target=run, name=f"egress-{gate.port}-conn", daemon=True).start()


_process_proxy: tuple[int, EgressProxy] | None = None
_process_lock = threading.Lock()


def process_proxy(settings: Settings) -> EgressProxy:
    """This worker process's proxy, started on first use with ``settings`` (again in a forked child: the threads of
    a proxy started before a fork do not exist in the child). Hosts pass their own policy to :meth:`EgressProxy.gate`;
    the first caller's ``egress_idle_timeout`` applies to all.

    Raises:
        ValueError: a malformed ``LODESTAR_EGRESS_HOSTS`` entry.
    """
    global _process_proxy
    with _process_lock:
        if _process_proxy is None or _process_proxy[0] != os.getpid():
            _process_proxy = (os.getpid(), EgressProxy.from_settings(settings))
        return _process_proxy[1]
