"""Every HTTP route of the API in one blueprint: the six Lightcone Agent Tasks calls and Lodestar's extras.

Contract: ``../shared/API.md``. Errors are ``{"error": {"type", "message", "fields"?}}`` with 400 (not JSON), 401,
404, 409 (``x-should-retry: false`` unless waiting can help), 422 (a field is invalid) or 503 (Redis down).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, request
from marshmallow import ValidationError
from redis.exceptions import RedisError

from shared import control
from shared.queue import enqueue
from shared.schemas import MessageSchema
from shared.states import TERMINAL, ExitCode, Status
from shared.store import ApplyResult, TaskStore, new_task_id, now

log = logging.getLogger(__name__)

bp = Blueprint("tasks", __name__)


class ApiError(Exception):
    """An error answer: HTTP ``status``, a machine ``kind``, a message, optional per-field reasons and headers."""

    def __init__(self, status: int, kind: str, message: str, fields: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.fields, self.headers = status, kind, message, fields, headers or {}

    def response(self) -> Response:
        body: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        resp = jsonify({"error": body})
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


def _store() -> TaskStore:
    return cast(TaskStore, current_app.extensions["lodestar.store"])


def tenant_of(key: str) -> str:
    """The tenant id of an API key: "t_" + the first 16 hex digits of its SHA-256."""
    return "t_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@bp.before_request
def _authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "unauthorized", "missing bearer API key (Authorization: Bearer <key>)")
    keys: tuple[str, ...] = current_app.config["LODESTAR"].api_keys
    if not any(hmac.compare_digest(key.strip().encode(), k.encode()) for k in keys):
        raise ApiError(401, "unauthorized", "invalid API key")
    g.tenant = tenant_of(key.strip())


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True, force=True)
    if data is None:
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _load_task(task_id: str) -> dict[str, Any]:
    record = _store().get(task_id)
    if record is None or record.get("tenant") != g.tenant:
        raise ApiError(404, "not_found", f"no task {task_id}")
    return record


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def _base_url() -> str:
    return current_app.config["LODESTAR"].public_base_url.rstrip("/") or request.host_url.rstrip("/")


def render_task(record: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The public JSON of a task record (shape: ``TaskSchema``)."""
    steps = record.get("steps_taken") or 0
    ended = record["status"] in TERMINAL
    shot = record.get("last_screenshot_step")
    return {
        "task_id": record["task_id"], "status": record["status"], "exit_code": record.get("exit_code"),
        "kind": record.get("kind"), "model": record.get("model"), "agent_type": record.get("agent_type"),
        "priority": record.get("priority"), "instruction": record.get("instruction"),
        "created_at": _iso(record.get("created_at")), "started_at": _iso(record.get("started_at")),
        "finished_at": _iso(record.get("finished_at")), "steps_taken": steps, "max_steps": record.get("max_steps"),
        "progress": 1.0 if ended else round(min(steps / max(record.get("max_steps") or 1, 1), 1.0), 4),
        "message": record.get("message"), "result": record.get("result"), "error": record.get("error"),
        "current_url": record.get("current_url"),
        "last_screenshot_url": f"{base_url}/agent/tasks/{record['task_id']}/screenshots/{shot}" if shot else None,
        "metadata": record.get("metadata") or {}, "idempotency_key": record.get("idempotency_key"),
    }


# --- start -----------------------------------------------------------------------------------------------------------
def _start() -> tuple[dict[str, Any], bool]:
    """Validate, store and enqueue a task; returns ``(record, reused)``."""
    body = _json_body()
    try:
        params = current_app.extensions["lodestar.start_schema"].load(body)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _summarise(exc.messages), fields=exc.messages) from None  # type: ignore[arg-type]
    store = _store()
    settings = current_app.config["LODESTAR"]
    task_id = new_task_id()
    idem_key = params.get("idempotency_key")
    if idem_key:
        slot = f"{store.prefix}:idempotency:{g.tenant}:{hashlib.sha256(idem_key.encode()).hexdigest()}"
        if not store.redis.set(slot, task_id, nx=True, ex=settings.task_retention):
            existing = store.redis.get(slot)
            record = store.get(existing.decode()) if existing else None  # type: ignore[union-attr]
            if record is not None:
                return record, True
            store.redis.set(slot, task_id, ex=settings.task_retention)
    record = {
        "task_id": task_id, "tenant": g.tenant, "status": str(Status.QUEUED), "kind": params["kind"],
        "model": params["model"], "agent_type": params.get("agent_type"), "instruction": params["instruction"],
        "priority": params["priority"], "max_steps": params["max_steps"],
        "max_duration_seconds": params["max_duration_seconds"], "temperature": params["temperature"],
        "screenshot_mode": params["screenshot_mode"], "stream_mode": params["stream_mode"],
        "viewport_width": params["viewport_width"], "viewport_height": params["viewport_height"],
        "metadata": params.get("metadata") or {}, "idempotency_key": idem_key, "created_at": now(),
        "steps_taken": 0, "params": {k: v for k, v in params.items() if k in ("start_url", "system_prompt", "context")},
    }
    store.create(record, {"type": "status", "status": "queued", "task_id": task_id, "ts": record["created_at"]})
    try:
        enqueue(current_app.extensions["lodestar.celery"], task_id, params["kind"], params["priority"])
    except Exception as exc:  # the broker refused: the task was never queued, so it must not linger as "queued"
        log.exception("enqueue of %s failed", task_id)
        store.finish(task_id, ExitCode.FAILED, error=f"could not be queued: {exc}")
        raise ApiError(503, "queue_unavailable", "the task queue is unavailable; retry later",
                       headers={"retry-after": "1"}) from None
    return record, False


def _summarise(messages: dict[str, Any]) -> str:
    parts = []
    for name, reasons in messages.items():
        text = reasons[0] if isinstance(reasons, list) and reasons and isinstance(reasons[0], str) else reasons
        parts.append(f"{name}: {text}")
    return "invalid request: " + "; ".join(parts)


@bp.post("/agent/tasks")
def start_task() -> Response:
    record, reused = _start()
    body: dict[str, Any] = {"task_id": record["task_id"], "status": record["status"]}
    if record.get("idempotency_key"):
        body.update(idempotency_key=record["idempotency_key"], reused=reused)
    return jsonify(body)


@bp.post("/agent/tasks/stream")
def start_task_stream() -> Response:
    record, _ = _start()
    return _sse(record, after=0)


@bp.get("/agent/tasks/<task_id>")
def retrieve_status(task_id: str) -> Response:
    return jsonify(render_task(_load_task(task_id), _base_url()))


# --- control ---------------------------------------------------------------------------------------------------------
def _control_answer(task_id: str, result: ApplyResult, verb: str) -> Response:
    if not result.found:
        raise ApiError(404, "not_found", f"no task {task_id}")
    if not result.ok:
        retry = verb == "pause" and result.status == Status.QUEUED  # it will start soon: waiting can help
        headers = {"x-should-retry": "true", "retry-after": "1"} if retry else {"x-should-retry": "false"}
        raise ApiError(409, "conflict", f"cannot {verb} a task that is {result.status}", headers=headers)
    record = _store().get(task_id)
    return jsonify({"status": record["status"] if record else result.status})


@bp.post("/agent/tasks/<task_id>/pause")
def pause_task(task_id: str) -> Response:
    _load_task(task_id)
    return _control_answer(task_id, control.send_pause(_store(), task_id), "pause")


@bp.post("/agent/tasks/<task_id>/resume")
def resume_task(task_id: str) -> Response:
    _load_task(task_id)
    return _control_answer(task_id, control.send_resume(_store(), task_id), "resume")


@bp.post("/agent/tasks/<task_id>/cancel")
def cancel_task(task_id: str) -> Response:
    _load_task(task_id)
    return _control_answer(task_id, control.send_cancel(_store(), task_id), "cancel")


@bp.post("/agent/tasks/<task_id>/messages")
def inject_message(task_id: str) -> Response:
    try:
        body = MessageSchema().load(_json_body())
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _summarise(exc.messages), fields=exc.messages) from None  # type: ignore[arg-type]
    _load_task(task_id)
    return _control_answer(task_id, control.send_message(_store(), task_id, body["message"]), "message")


# --- events and screenshots -----------------------------------------------------------------------------------------
def _render_event(store: TaskStore, record: dict[str, Any], seq: int, event: dict[str, Any], base_url: str,
                  ) -> dict[str, Any]:
    event = {"seq": seq, **event}
    shot = event.pop("screenshot", None)
    if isinstance(shot, dict) and "step" in shot:
        if record.get("screenshot_mode") == "base64":
            data = store.get_screenshot(record["task_id"], shot["step"])
            event["screenshot"] = "data:image/jpeg;base64," + base64.b64encode(data).decode() if data else None
        else:
            event["screenshot_url"] = f"{base_url}/agent/tasks/{record['task_id']}/screenshots/{shot['step']}"
    if record.get("stream_mode") == "concise" and event["type"] == "step":
        for detail in ("results", "messages", "url"):
            event.pop(detail, None)
    return event


def event_frames(store: TaskStore, record: dict[str, Any], after: int, base_url: str, keepalive: float,
                 ) -> Iterator[tuple[int, dict[str, Any]] | None]:
    """Yield ``(seq, rendered event)`` from seq ``after`` + 1 until the ``end`` event, or None on an idle
    ``keepalive`` interval. Reads the task's Redis Stream with XREAD BLOCK, so any API replica can serve it."""
    task_id = record["task_id"]
    while True:
        batch = store.read_events(task_id, after, block_ms=int(keepalive * 1000))
        if not batch:
            current = store.get(task_id)
            if current is None or (current["status"] in TERMINAL and current.get("event_seq", 0) <= after):
                return
            yield None
            continue
        for seq, event in batch:
            after = seq
            yield seq, _render_event(store, record, seq, event, base_url)
            if event.get("type") == "end":
                return


def _sse(record: dict[str, Any], after: int) -> Response:
    store, base_url = _store(), _base_url()
    keepalive = current_app.config["LODESTAR"].sse_keepalive

    def generate() -> Iterator[str]:
        yield ": stream of task events\n\n"
        for frame in event_frames(store, record, after, base_url, keepalive):
            if frame is None:
                yield ": keepalive\n\n"
            else:
                yield f"id: {frame[0]}\ndata: {json.dumps(frame[1], separators=(',', ':'))}\n\n"

    return Response(generate(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", "Last-Event-ID must be an event seq (an integer)",
                       fields={"Last-Event-ID": ["Not a valid integer."]}) from None
    if value < 0:
        raise ApiError(422, "invalid_request", "Last-Event-ID must be >= 0",
                       fields={"Last-Event-ID": ["Must be >= 0."]})
    return value


@bp.get("/agent/tasks/<task_id>/events")
def task_events(task_id: str) -> Response:
    return _sse(_load_task(task_id), _last_event_id())


@bp.get("/agent/tasks/<task_id>/screenshots/<int:step>")
def task_screenshot(task_id: str, step: int) -> Response:
    _load_task(task_id)
    data = _store().get_screenshot(task_id, step)
    if data is None:
        raise ApiError(404, "not_found", f"no screenshot for step {step} of task {task_id} (or it expired)")
    return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=86400, immutable"})


def register_websocket(sock: Any) -> None:
    """Add ``GET /agent/tasks/{id}/ws``: the same events as the SSE stream, one JSON text message each."""

    @sock.route("/agent/tasks/<task_id>/ws", bp=bp)
    def task_events_ws(ws: Any, task_id: str) -> None:
        record = _load_task(task_id)
        store, base_url = _store(), _base_url()
        keepalive = current_app.config["LODESTAR"].sse_keepalive
        for frame in event_frames(store, record, _last_event_id(), base_url, keepalive):
            if frame is not None:
                ws.send(json.dumps(frame[1], separators=(",", ":")))
        ws.close()


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return exc.response()


@bp.errorhandler(RedisError)
def _redis_error(exc: RedisError) -> Response:
    log.error("redis error: %s", exc)
    return ApiError(503, "store_unavailable", "the task store (Redis) is unavailable; retry later",
                    headers={"retry-after": "1"}).response()
