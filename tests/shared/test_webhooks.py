"""Webhook deliveries connect to the address the network guard checked, not to whatever the name resolves to later."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.netguard import NetworkGuard
from shared.webhooks import pinned_session


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            hosts.append(self.headers.get("Host", ""))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(204)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], hosts
    httpd.shutdown()


def test_a_pinned_session_connects_to_the_checked_address_and_keeps_the_name(server: tuple[int, list[str]]) -> None:
    # Given a name that no resolver knows, pinned to the address that was checked
    port, hosts = server
    with pinned_session("127.0.0.1") as session:
        # When a delivery is POSTed to it
        resp = session.post(f"http://hooks.example.invalid:{port}/h", data=b"{}", timeout=10)
    # Then the connection went to the pinned address (no lookup of the name), which saw the name in Host
    assert resp.status_code == 204
    assert hosts == [f"hooks.example.invalid:{port}"]


@pytest.mark.parametrize("url", ["http://localhost.:9/h", "http://127.0.0.1:9/h", "http://[::1]:9/h",
                                 "http://2130706433:9/h", "http://169.254.169.254/latest", "ftp://example.com/"])
def test_pin_refuses_private_and_disguised_addresses(url: str) -> None:
    reason, address = NetworkGuard(False, (), "LODESTAR_WEBHOOK_ALLOWED_HOSTS").pin(url)
    assert reason and address is None


def test_pin_refuses_a_name_that_does_not_resolve_and_allows_listed_hosts() -> None:
    assert NetworkGuard(False).pin("http://nothing.example.invalid/")[0] == "host 'nothing.example.invalid' does " \
        "not resolve"
    reason, address = NetworkGuard(False, ("127.0.0.1:8080",)).pin("http://127.0.0.1:8080/h")
    assert reason is None and str(address) == "127.0.0.1"
