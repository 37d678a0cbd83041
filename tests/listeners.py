"""Real sockets for the egress tests: services an agent must not reach that count every connection (TCP) or
datagram (UDP) they get, and a small web site whose pages the tests write inline and which logs every request."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = b"LOOPBACK-SECRET"
"""What a forbidden service answers: it must never appear in a page, a screenshot's page or a fetch's result."""


def eventually(check: Callable[[], Any], timeout: float = 15, what: str = "the condition") -> Any:
    """Poll ``check`` every 20 ms until it returns something truthy; return it. Raises AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


class Listener:
    """A TCP service on ``host`` (loopback by default) that answers any request with :data:`SECRET` (and a CORS
    header, so a page could read it if it ever got there); ``accepts`` counts the connections it accepted."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.accepts = 0
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{self.netloc}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            try:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: text/html\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(SECRET), SECRET))
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class UdpListener:
    """A UDP socket on 127.0.0.1 counting the datagrams it receives (``datagrams``)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.datagrams = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.sock.recvfrom(65536)
            except OSError:
                return
            self.datagrams += 1

    def close(self) -> None:
        self.sock.close()


@dataclass
class Hit:
    """One request the site served."""

    method: str
    host: str
    path: str
    body: bytes = b""


@dataclass
class EgressSite:
    """A web site on 127.0.0.1 (``port``) for the egress tests; ``hits`` logs every request.

    Routes: ``/html?body=<html>`` answers that page; ``/redirect?to=<url>[&code=302|307]`` redirects (GET or POST);
    anything else answers a small page naming its path.
    """

    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def page(self, html: str, host: str = "127.0.0.1") -> str:
        """The URL of a page whose body is ``html``."""
        return self.url("/html?body=" + urllib.parse.quote(html, safe=""), host)

    def redirect(self, to: str, code: int = 302, host: str = "127.0.0.1") -> str:
        """The URL of a ``code`` redirect to ``to``."""
        return self.url(f"/redirect?code={code}&to=" + urllib.parse.quote(to, safe=""), host)

    def hosts_seen(self) -> set[str]:
        return {h.host.rsplit(":", 1)[0] for h in self.hits}

    @classmethod
    def start(cls) -> EgressSite:
        site = cls()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                site.hits.append(Hit(self.command, self.headers.get("Host", ""), self.path, body))
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query)
                if parts.path == "/redirect":
                    self.send_response(int(query.get("code", ["302"])[0]))
                    self.send_header("Location", query["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                page = query["body"][0] if parts.path == "/html" else f"<title>{parts.path}</title>site {parts.path}"
                data = f"<!doctype html><html><body>{page}</body></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        site.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        site.port = site.server.server_address[1]
        threading.Thread(target=site.server.serve_forever, daemon=True).start()
        return site

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
