"""The scripted fake-provider server every provider fake builds on.

A :class:`FakeProvider` serves one provider's endpoint on a free 127.0.0.1 port. Tests register a
:class:`Session` per task (``fake.script(key, turns)``): the first request whose first user text contains ``key``
opens it, and continuations find it again (by ``previous_response_id``, or by the same first text for APIs that
resend the history). Each request consumes the next turn: a :class:`Reply` (any status, e.g. a 429 with
``retry-after``) or a callable ``turn(body, session) -> dict | Reply`` that checks the request with ``assert`` and
builds the answer. A failed check is recorded in ``session.errors`` and answered with a 400 carrying the message,
so the SDK raises and the test sees it. Every request also goes through the provider's own field-by-field check
(``FakeProvider.check``).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


@dataclass
class Reply:
    """An HTTP answer: ``body`` as JSON (None: empty), extra ``headers``."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    """One request as the fake received it (``at``: time.monotonic(); ``wall``: time.time())."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    wall: float = field(default_factory=time.time)


Turn = Callable[[dict[str, Any], "Session"], "dict[str, Any] | Reply"] | Reply


@dataclass
class Session:
    """One scripted conversation. ``data`` is free for the turns (e.g. the last image size they saw)."""

    key: str
    turns: list[Turn]
    requests: list[Recorded] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    forever: Reply | None = None
    """Answer every request with this (e.g. a 500 forever) instead of the turns."""

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests]


def image_size(url_or_b64: str) -> tuple[int, int]:
    """Size of an image given as a data URL or bare base64. Raises AssertionError if it is not an image."""
    data = url_or_b64.split(",", 1)[1] if url_or_b64.startswith("data:") else url_or_b64
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            return img.size
    except Exception as exc:
        raise AssertionError(f"not an image: {exc}") from None


def check_data_url(url: Any) -> tuple[int, int]:
    """A ``data:image/jpeg|png;base64,...`` URL of a decodable image; returns its size."""
    assert isinstance(url, str) and url.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")), \
        f"expected an image data URL, got {str(url)[:60]!r}"
    return image_size(url)


class FakeProvider:
    """Base of the fakes. Subclasses set ``paths`` and implement :meth:`check`, :meth:`first_text`,
    :meth:`previous_id` and :meth:`error_body`."""

    paths: tuple[str, ...] = ()

    def __init__(self, key: str):
        self.key = key
        self.sessions: list[Session] = []
        self.by_id: dict[str, Session] = {}
        self.unmatched: list[Recorded] = []
        self.received: list[Recorded] = []
        """Every request, in the order it arrived (what :meth:`busiest` counts)."""
        self._lock = threading.Lock()
        self._ids = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = fake._handle(urllib.parse.urlsplit(self.path).path, dict(self.headers.items()), raw)
                data = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}_{self._ids}"

    def script(self, key: str, turns: list[Turn], forever: Reply | None = None) -> Session:
        """Register the conversation of the task whose first user text contains ``key``."""
        session = Session(key, list(turns), forever=forever)
        with self._lock:
            self.sessions.append(session)
        return session

    def error(self, status: int, message: str, **headers: str) -> Reply:
        """An error answer in the provider's own error JSON; ``headers`` use ``_`` for ``-``
        (``retry_after_ms="200"``)."""
        return Reply(status, self.error_body(status, message), {k.replace("_", "-"): v for k, v in headers.items()})

    def busiest(self, window: float, sessions: list[Session] | None = None) -> int:
        """The most requests (of ``sessions``, default all) that arrived within any ``window`` seconds: the fake's
        requests-per-window count, for rate-limit tests."""
        times = sorted(r.at for r in (self.received if sessions is None else
                                      [r for s in sessions for r in s.requests]))
        most, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window:
                start += 1
            most = max(most, end - start + 1)
        return most

    def per_second(self) -> dict[int, int]:
        """Requests counted per whole second since the first one."""
        counts: dict[int, int] = {}
        times = [r.at for r in self.received]
        for at in times:
            second = int(at - times[0])
            counts[second] = counts.get(second, 0) + 1
        return counts

    def remember(self, response_id: str, session: Session) -> None:
        """Continuations naming ``response_id`` (``previous_response_id``) belong to ``session``."""
        self.by_id[response_id] = session

    # -- subclass hooks ---------------------------------------------------------------------------------------
    def check(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        """The provider's field-by-field check of every request (AssertionError on a violation)."""

    def first_text(self, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def previous_id(self, body: dict[str, Any]) -> str | None:
        return None

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}}

    # -- dispatch ---------------------------------------------------------------------------------------------
    def _session_for(self, body: dict[str, Any]) -> Session | None:
        previous = self.previous_id(body)
        if previous is not None:
            return self.by_id.get(previous)
        text = self.first_text(body)
        return next((s for s in self.sessions if s.key in text), None)

    def _handle(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return Reply(400, self.error_body(400, "fake: body is not JSON"))
        record = Recorded(path, {k.lower(): v for k, v in headers.items()}, body, time.monotonic())
        with self._lock:
            self.received.append(record)
        try:
            assert path in self.paths, f"unexpected path {path} (expected {self.paths})"
            session = self._session_for(body)
            assert session is not None, "no script for this request"
        except AssertionError as exc:
            self.unmatched.append(record)
            return Reply(400, self.error_body(400, f"fake: {exc}"))
        with self._lock:
            session.requests.append(record)
            turn = session.forever if session.forever is not None else (session.turns.pop(0) if session.turns
                                                                         else None)
        try:
            self.check(path, record.headers, body)
            if turn is None:
                raise AssertionError(f"script {session.key!r} has no turn left for request {len(session.requests)}")
            result = turn if isinstance(turn, Reply) else turn(body, session)
        except AssertionError as exc:
            session.errors.append(f"request {len(session.requests)}: {exc}")
            return Reply(400, self.error_body(400, f"fake check failed: {exc}"))
        return result if isinstance(result, Reply) else Reply(200, result)
