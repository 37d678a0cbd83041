"""A gate: one listening port of the egress proxy, and the rules in force for whatever connects through it.

A browser context (one task) or a desktop display gets a gate of its own; Chromium itself gets one that is never
opened, so its background requests are refused without being reported for a task. Rules change only through
:meth:`Gate.open` (a task's environment opens), :meth:`Gate.reset` (it ended) and :meth:`Gate.close`; each change
starts a new generation and cuts every connection of the previous ones, so a previous task's leftovers (a kept-alive
connection, a tunnel, a WebSocket) are refused or closed, never served under the next task's rules.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from worker.egress.rules import DEFAULT_PORTS, EgressPolicy, EgressRules, Refusal, Verdict

log = logging.getLogger(__name__)

LOCAL_SCHEMES = ("data", "blob", "about", "chrome-error")
"""URL schemes a browser serves itself (never through the network), which a navigation may use."""
NETWORK_SCHEMES = ("http", "https", "ws", "wss")

Serve = Callable[[socket.socket, Any, "Gate", int], None]
"""Starts serving one accepted client connection: ``(socket, address, gate, generation)``; must not block."""


class Gate:
    """One port on 127.0.0.1 of the egress proxy (``url`` is "http://127.0.0.1:<port>"), closed (refusing
    everything) until :meth:`open`. Thread-safe: the proxy's connection threads call :meth:`decide` and
    :meth:`refuse`, the task's thread the rest.

    Args:
        policy: the deployment's rules.
        serve: hands an accepted connection to the proxy (``worker/egress/server.py``).
        keep: refusals kept for :meth:`refusals_since` (the oldest are dropped first).
    """

    def __init__(self, policy: EgressPolicy, serve: Serve, keep: int = 1000):
        self._policy = policy
        self._serve = serve
        self._lock = threading.Lock()
        self._rules: EgressRules | None = None
        self._generation = 0
        self._conns: dict[int, tuple[socket.socket, int]] = {}
        self._refusals: deque[Refusal] = deque(maxlen=keep)
        self._seq = 0
        self._taken = 0
        self._reported: set[tuple[str, int]] = set()
        self._closed = False
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name=f"egress-{self.port}", daemon=True)
        self._thread.start()

    # -- the task's side ---------------------------------------------------------------------------------------------
    def open(self, rules: EgressRules) -> None:
        """Put ``rules`` in force (a task's environment opens); connections made before are cut.

        Raises:
            RuntimeError: the gate is closed.
        """
        self._switch(rules)

    def reset(self) -> None:
        """Refuse everything again (the task ended); connections made before are cut. Nothing to do once closed."""
        if not self._closed:
            self._switch(None)

    def close(self) -> None:
        """Stop listening and cut every connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._rules = None
            self._generation += 1
            conns = [c for c, _ in self._conns.values()]
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self._sock.close()
        _cut(conns)
        self._thread.join(timeout=5)

    @property
    def connections(self) -> int:
        """Client connections open through this gate now."""
        with self._lock:
            return len(self._conns)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def rules(self) -> EgressRules | None:
        """The rules in force (None: closed)."""
        return self._rules

    def check_url(self, url: str, method: str = "NAVIGATE") -> str | None:
        """Check a URL before the browser is asked to load it (a ``navigate``): None when it may go out, else the
        reason, recorded and reported like a refused request. Local schemes (about:, data:, blob:) pass; other
        non-network schemes (file:, chrome:, ...) are refused."""
        parts = urlsplit(url)
        if parts.scheme in LOCAL_SCHEMES:
            return None
        if parts.scheme not in NETWORK_SCHEMES:
            return f"scheme {parts.scheme!r} is not allowed"
        host = parts.hostname or ""
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            return f"bad port in {url!r}"
        generation = self._generation
        verdict = self.decide(host, port, generation)
        if verdict.reason is not None:
            self.refuse(method, url, host, port, verdict.reason, generation)
        return verdict.reason

    def mark(self) -> int:
        """The seq of the latest refusal (0: none yet); pass it to :meth:`refusals_since`."""
        return self._seq

    def refusals_since(self, mark: int) -> list[Refusal]:
        """Refusals after ``mark``, oldest first."""
        with self._lock:
            return [r for r in self._refusals if r.seq > mark]

    def take_refusals(self) -> list[Refusal]:
        """Refusals since the last call (or since the rules were last put in force), oldest first."""
        with self._lock:
            taken, self._taken = self._taken, self._seq
            return [r for r in self._refusals if r.seq > taken]

    # -- the proxy's side --------------------------------------------------------------------------------------------
    def decide(self, host: str, port: int | None, generation: int) -> Verdict:
        """The verdict on a request of a connection accepted in ``generation``: refused when that is not the
        current one (a leftover) or the gate is closed, else the policy's."""
        with self._lock:
            rules = self._rules
            current = generation == self._generation
        if not current:
            return Verdict(reason="the connection was opened before the current task's environment")
        if rules is None:
            return Verdict(reason="no task is running in this worker process")
        return self._policy.decide(host, port, rules)

    def refuse(self, method: str, url: str, host: str, port: int | None, reason: str, generation: int) -> Refusal:
        """Record a refused request and report it (``EgressRules.on_block``) once per host and port for the rules
        in force, when it came from a connection of the current generation."""
        with self._lock:
            self._seq += 1
            refusal = Refusal(self._seq, method, url, host, port or 0, reason)
            self._refusals.append(refusal)
            rules = self._rules if generation == self._generation else None
            key = (host.lower(), port or 0)
            report = rules is not None and rules.on_block is not None and key not in self._reported
            if report:
                self._reported.add(key)
        log.info("egress refused %s %s (task %s): %s", method, url, rules.task_id if rules else None, reason)
        if report and rules is not None and rules.on_block is not None:
            rules.on_block(refusal.event())
        return refusal

    def forget(self, conn: socket.socket) -> None:
        """The proxy is done with ``conn`` (closed)."""
        with self._lock:
            self._conns.pop(id(conn), None)

    # -- internals ---------------------------------------------------------------------------------------------------
    def _switch(self, rules: EgressRules | None) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the egress gate is closed")
            self._rules = rules
            self._generation += 1
            self._reported = set()
            self._taken = self._seq
            stale = [c for c, _ in self._conns.values()]
        _cut(stale)

    def _accept(self) -> None:
        while True:
            try:
                conn, address = self._sock.accept()
            except OSError as exc:
                if self._closed:
                    return
                log.warning("egress gate %s: accept failed: %s", self.port, exc)  # EMFILE and the like
                time.sleep(0.1)
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                generation = self._generation
                self._conns[id(conn)] = (conn, generation)
            try:
                self._serve(conn, address, self, generation)
            except Exception:
                log.exception("egress gate %s: could not serve a connection", self.port)
                self.forget(conn)
                conn.close()


def _cut(conns: list[socket.socket]) -> None:
    """Shut connections down both ways: their proxy threads see the end and close them (and their upstreams)."""
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
