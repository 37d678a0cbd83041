"""Watching tasks: the event stream over SSE (``start_stream`` and ``GET .../events``, replaying after
``Last-Event-ID``) and over a WebSocket. Each API process follows a task once, however many clients watch it
(``api/fanout.py``). The step screenshots are in ``artifacts.py``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request
from flask_sock import Sock

from api.auth import authenticate_or_shared, base_url, load_task, share_expiry
from api.errors import ApiError, invalid_field
from api.fanout import Delivery
from api.sockets import socket_writer
from api.state import AppState, state
from shared.signing import UrlSigner
from shared.store import TaskStore
from shared.task import Task

bp = Blueprint("events", __name__)
bp.before_request(authenticate_or_shared)
sock = Sock()  # the WebSocket route lives on the blueprint; create_app calls sock.init_app


def render_event(store: TaskStore, signer: UrlSigner, task: Task, seq: int, event: dict[str, Any],
                 base: str, not_after: int | None = None) -> dict[str, Any]:
    """An event as clients see it: ``seq`` added, the stored screenshot reference turned into ``screenshot_url``
    (a signed URL under ``base``, expiring after ``url_ttl`` or at ``not_after``, epoch seconds, if sooner: a share
    link's expiry) or a base64 data URL in ``screenshot_mode: base64``, and the details dropped in
    ``stream_mode: concise``. Runs outside the request context (while streaming): everything it needs is passed in."""
    event = {"seq": seq, **event}
    shot = event.pop("screenshot", None)
    if isinstance(shot, dict) and "step" in shot:
        if task.screenshot_mode == "base64":
            data = store.get_screenshot(task.task_id, shot["step"])
            event["screenshot"] = "data:image/jpeg;base64," + base64.b64encode(data).decode() if data else None
        else:
            event["screenshot_url"] = signer.screenshot_urls(base, not_after)(task, int(shot["step"]))
    if task.stream_mode == "concise" and event["type"] == "step":
        for detail in ("results", "messages", "url"):
            event.pop(detail, None)
    return event


def _rendering(base: str, not_after: int | None) -> str:
    """The memo key of an event's rendering for streams under ``base`` whose URLs expire by ``not_after``."""
    return base if not_after is None else f"{base} until {not_after}"


def _event_json(st: AppState, task: Task, delivery: Delivery, base: str, not_after: int | None = None) -> bytes:
    """The event as compact JSON, rendered once per API process, base URL and share-link expiry (a screenshot URL
    it signs stays valid for ``url_ttl`` from the event's first rendering: live events are rendered as they
    happen)."""
    return delivery.rendered(_rendering(base, not_after), lambda: json.dumps(
        render_event(st.store, st.signer, task, delivery.seq, delivery.event, base, not_after),
        separators=(",", ":")).encode())


def _sse_frame(st: AppState, task: Task, delivery: Delivery, base: str, not_after: int | None = None) -> bytes:
    """The event as one SSE frame (``id:`` and ``data:`` lines), rendered once per API process, base URL and
    share-link expiry."""
    return delivery.rendered("sse " + _rendering(base, not_after), lambda: b"id: %d\ndata: %s\n\n" % (
        delivery.seq, _event_json(st, task, delivery, base, not_after)))


def sse(task: Task, after: int) -> Response:
    """The SSE answer streaming ``task``'s events with seq > ``after`` until its ``end`` event (through a share
    link, its screenshot URLs expire with the link)."""
    st, base, not_after = state(), base_url(), share_expiry()
    hub, keepalive = st.events, st.settings.sse_keepalive

    def frame(delivery: Delivery) -> bytes:
        return _sse_frame(st, task, delivery, base, not_after)

    # under gunicorn's gevent worker the hub writes the frames of a caught-up stream itself (api/sockets.py); not
    # for base64 screenshots, whose rendering reads the artifact store (the hub does no I/O but sends)
    direct = st.settings.sse_direct_writes and task.screenshot_mode != "base64"
    writer = socket_writer(request.environ, frame, _rendering(base, not_after)) if direct else None

    def generate() -> Iterator[bytes]:
        yield b": stream of task events\n\n"
        for delivery in hub.frames(task.task_id, after, keepalive, writer):
            yield b": keepalive\n\n" if delivery is None else frame(delivery)

    # direct_passthrough: the frames are bytes already, so werkzeug hands the generator to the server as it is
    return Response(generate(), mimetype="text/event-stream", direct_passthrough=True,
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event_position(name: str, raw: str | None) -> int | None:
    """``raw`` (a header or query value) as an event seq >= 0, None when absent. Raises ApiError 422 naming it."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid_field(name, f"{name} must be an event seq (an integer)", "Not a valid integer.") from None
    if value < 0:
        raise invalid_field(name, f"{name} must be >= 0", "Must be >= 0.")
    return value


def _last_event_id() -> int:
    """Where a (re)attaching stream starts: the ``Last-Event-ID`` header, else the ``after`` query parameter, else
    0. Both are checked when both are given (the header wins)."""
    header = _event_position("Last-Event-ID", request.headers.get("Last-Event-ID"))
    query = _event_position("after", request.args.get("after"))
    return header if header is not None else query or 0


@bp.get("/agent/tasks/<task_id>/events")
def task_events(task_id: str) -> Response:
    return sse(load_task(task_id), _last_event_id())


@bp.get("/agent/tasks/<task_id>/ws")
def task_events_ws_without_upgrade(task_id: str) -> Response:
    """GET /agent/tasks/{id}/ws as a plain HTTP request (no ``Upgrade: websocket``): authenticated like every route
    (401), then 404 for no such task, else 426 Upgrade Required naming what to do. A WebSocket handshake is
    routed to :func:`task_events_ws` instead (werkzeug matches it to the WebSocket rule of the same path)."""
    load_task(task_id)
    raise ApiError(426, "upgrade_required", "this is a WebSocket endpoint: connect with a WebSocket client "
                   "(Upgrade: websocket), or read the same events as SSE from /agent/tasks/{id}/events",
                   headers={"Upgrade": "websocket"})


@sock.route("/agent/tasks/<task_id>/ws", bp=bp)
def task_events_ws(ws: Any, task_id: str) -> None:
    """GET /agent/tasks/{id}/ws: the same events as the SSE stream, one JSON text message each."""
    try:
        task = load_task(task_id)
        after = _last_event_id()
    except ApiError as exc:
        ws.close(reason=1008, message=exc.message[:120])  # the handshake is done: answer as a WebSocket close
        return
    st, base = state(), base_url()
    for delivery in st.events.frames(task_id, after, st.settings.sse_keepalive):
        if delivery is None:
            if not ws.connected:  # the client left while the task was quiet: free this thread
                return
            continue
        ws.send(_event_json(st, task, delivery, base).decode())
    ws.close()
