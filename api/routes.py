"""Every HTTP route of the API in one blueprint: the six Lightcone Agent Tasks calls and Lodestar's extras.

Contract: ``../shared/API.md``. Errors are ``{"error": {"type", "message", "fields"?}}`` with 400 (not JSON), 401,
404, 409 (``x-should-retry: false`` unless waiting can help), 422 (a field is invalid) or 503 (Redis down).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from celery import Celery
from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_sock import Sock
from marshmallow import ValidationError
from redis.exceptions import RedisError

from api.fanout import Delivery, EndWatcher, EventHub
from shared import control, webhooks
from shared.queue import RunTaskMessages, task_ended
from shared.schemas import MessageSchema, task_json
from shared.settings import Settings
from shared.states import TERMINAL, Status
from shared.store import ApplyResult, TaskFilter, TaskStore, new_id, new_task_id, now
from shared.tenants import RateLimiter, Tenants

log = logging.getLogger(__name__)

bp = Blueprint("tasks", __name__)
sock = Sock()  # WebSocket routes live on the blueprint; create_app calls sock.init_app


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


def _celery() -> Celery:
    return cast(Celery, current_app.extensions["lodestar.celery"])


def _settings() -> Settings:
    return cast(Settings, current_app.config["LODESTAR"])


def authenticate() -> None:
    """Resolve the bearer key to a principal (``g.principal``, ``g.tenant``); 401 without a valid one, 429 (with
    ``retry-after``) past the tenant's rate limit."""
    if request.blueprint != bp.name:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing bearer API key (Authorization: Bearer <key>)")
    principal = cast(Tenants, current_app.extensions["lodestar.tenants"]).resolve(key.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    g.principal = principal
    g.tenant = principal.tenant
    if principal.rate_limit:
        wait = cast(RateLimiter, current_app.extensions["lodestar.ratelimits"]).retry_after(
            principal.tenant, principal.rate_limit)
        if wait:
            raise ApiError(429, "too_many_requests", f"rate limit of {principal.rate_limit} exceeded",
                           headers={"retry-after": str(wait), "x-should-retry": "true"})


def _json_body() -> Any:
    data = request.get_json(silent=True, force=True)
    if data is None:
        raise ApiError(400, "invalid_json", "the request body must be JSON")
    return data


def _json_object() -> dict[str, Any]:
    data = _json_body()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _load_task(task_id: str) -> dict[str, Any]:
    record = _store().get(task_id)
    if record is None or record.get("tenant") != g.tenant:
        raise ApiError(404, "not_found", f"no task {task_id}")
    return record


def _base_url() -> str:
    return _settings().public_base_url.rstrip("/") or request.host_url.rstrip("/")


def _invalid(exc: ValidationError) -> ApiError:
    messages = cast(dict[str, Any], exc.messages)
    return ApiError(422, "invalid_request", _summarise(messages), fields=messages)


def _summarise(messages: dict[str, Any]) -> str:
    parts = []
    for name, reasons in messages.items():
        text = reasons[0] if isinstance(reasons, list) and reasons and isinstance(reasons[0], str) else reasons
        parts.append(f"{name}: {text}")
    return "invalid request: " + "; ".join(parts)


# --- start and batch ---------------------------------------------------------------------------------------------
def _new_record(params: dict[str, Any], batch_id: str | None = None) -> dict[str, Any]:
    principal = g.principal
    return {
        "task_id": new_task_id(), "tenant": principal.tenant, "status": str(Status.QUEUED), "kind": params["kind"],
        "model": params["model"], "agent_type": params.get("agent_type"), "instruction": params["instruction"],
        "priority": params["priority"], "max_steps": params["max_steps"],
        "max_duration_seconds": params["max_duration_seconds"], "temperature": params["temperature"],
        "screenshot_mode": params["screenshot_mode"], "stream_mode": params["stream_mode"],
        "viewport_width": params["viewport_width"], "viewport_height": params["viewport_height"],
        "persistent": bool(params.get("persistent") or params.get("save_session")),
        "metadata": params.get("metadata") or {}, "idempotency_key": params.get("idempotency_key"),
        "webhook_url": params.get("webhook_url") or principal.webhook_url,
        "webhook_events": params.get("webhook_events") or "terminal", "batch_id": batch_id,
        "created_at": now(), "steps_taken": 0,
        "params": {k: v for k, v in params.items() if k in ("start_url", "system_prompt", "context")},
    }


def _idempotency_slot(store: TaskStore, record: dict[str, Any]) -> str:
    digest = hashlib.sha256(record["idempotency_key"].encode()).hexdigest()
    return f"{store.prefix}:idempotency:{record['tenant']}:{digest}"


IN_PROGRESS: dict[str, Any] = {"in_progress": True}
"""What :func:`_idempotent` answers for a key whose first request is still storing its task."""
IDEMPOTENCY_GRACE = 60.0
"""Seconds after a key is claimed during which a missing task means "being stored", not "expired"."""


def _idempotent(records: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """For each record with an idempotency key: the task that key already created (within the window), the
    earlier record of this same request with that key, :data:`IN_PROGRESS` when another request claimed the key
    less than ``IDEMPOTENCY_GRACE`` s ago and has not stored its task yet, or None (the key is now this
    record's). Claims the keys of the new ones; a few pipelined round trips whatever the number of records."""
    store, window = _store(), _settings().idempotency_window
    found: list[dict[str, Any] | None] = [None] * len(records)
    slots: dict[int, str] = {}
    first_with: dict[str, int] = {}
    duplicates: dict[int, int] = {}  # the same key twice in one batch: one task, the first item's
    for i, r in enumerate(records):
        if r.get("idempotency_key"):
            slot = _idempotency_slot(store, r)
            if slot in first_with:
                duplicates[i] = first_with[slot]
            else:
                first_with[slot] = i
                slots[i] = slot
    if not slots:
        return found
    pipe = store.redis.pipeline(transaction=False)
    for i, slot in slots.items():
        pipe.set(slot, records[i]["task_id"], nx=True, ex=window)
    taken = [i for i, ok in zip(slots, pipe.execute()) if not ok]
    if not taken:
        return _same_key_as_before(found, records, duplicates)
    pipe = store.redis.pipeline(transaction=False)
    for i in taken:
        pipe.get(slots[i])
        pipe.pttl(slots[i])
    answers = pipe.execute()
    for n, i in enumerate(taken):
        existing, ttl_ms = cast(bytes | None, answers[2 * n]), cast(int, answers[2 * n + 1])
        record = store.get(existing.decode()) if existing else None
        if record is not None:
            found[i] = record
        elif existing and ttl_ms > 0 and window - ttl_ms / 1000 < IDEMPOTENCY_GRACE:
            found[i] = IN_PROGRESS  # claimed moments ago by a request that is still writing its task
        else:  # the task it named expired: the key is free again
            store.redis.set(slots[i], records[i]["task_id"], ex=window)
    return _same_key_as_before(found, records, duplicates)


def _same_key_as_before(found: list[dict[str, Any] | None], records: list[dict[str, Any]],
                        duplicates: dict[int, int]) -> list[dict[str, Any] | None]:
    """Give each repeated key the answer of its first item: the task that key already had, IN_PROGRESS, or
    the first item's own new record."""
    for i, first in duplicates.items():
        found[i] = found[first] if found[first] is not None else records[first]
    return found


def _check_room(new: int) -> None:
    limit = g.principal.max_queued
    if limit and _store().count(g.tenant, Status.QUEUED) + new > limit:
        raise ApiError(429, "queue_full", f"at most {limit} queued tasks per tenant; wait for some to start",
                       headers={"retry-after": "5"})


def _submit(records: list[dict[str, Any]]) -> int:
    """Store and enqueue new tasks; returns how many were (a prefix of ``records``).

    Each chunk of 1000 records, their index entries and their Celery messages go in one MULTI/EXEC, so a task
    is either stored and queued or neither (the messages are built by ``RunTaskMessages``, not one
    ``send_task`` each). When Redis fails midway, the chunks already written stay accepted, the rest are not
    stored and their idempotency keys are released; the caller reports them. A chunk whose EXEC may have run
    with its reply lost is looked up: found, it counts as stored; when Redis cannot even be asked, the keys
    stay claimed (a retry gets 409 for ``IDEMPOTENCY_GRACE`` s, then the key is free), so a lost reply never
    turns a retry into a second task.
    """
    store = _store()
    messages = cast(RunTaskMessages, current_app.extensions["lodestar.messages"])
    done = 0
    for start in range(0, len(records), 1000):
        chunk = records[start:start + 1000]
        try:
            pipe = store.redis.pipeline(transaction=True)
            store.create_many(chunk, pipe)
            queues: dict[str, list[str]] = {}
            for r in chunk:
                key, message = messages.message(r["task_id"], r["kind"], r["priority"])
                queues.setdefault(key, []).append(message)
            for key, queued in queues.items():
                pipe.lpush(key, *queued)  # in order: the worker pops from the other end (FIFO)
            pipe.execute()
        except Exception:
            log.exception("storing and queueing %d tasks failed", len(records) - done)
            try:
                if store.redis.exists(store.key(chunk[0]["task_id"])):  # EXEC ran; only its reply was lost
                    done += len(chunk)
                    continue
                slots = [_idempotency_slot(store, r) for r in records[done:] if r.get("idempotency_key")]
                if slots:  # not stored: a retry with the same key must create the task
                    store.redis.delete(*slots)
            except RedisError:
                pass  # unknown: the keys stay claimed (see above)
            return done
        done += len(chunk)
        if done < len(records):
            time.sleep(0)  # a big batch lets the other requests of this process run between chunks (gevent)
    return done


def _in_progress() -> ApiError:
    return ApiError(409, "idempotency_key_in_use", "a request with this idempotency_key is still storing its "
                    "task; retry in a moment", headers={"retry-after": "1"})


def _unavailable() -> ApiError:
    return ApiError(503, "queue_unavailable", "the task store and queue (Redis) is unavailable; retry later",
                    headers={"retry-after": "1"})


def _start() -> tuple[dict[str, Any], bool]:
    """Validate, store and enqueue one task; returns ``(record, reused)``."""
    try:
        params = current_app.extensions["lodestar.start_schema"].load(_json_object())
    except ValidationError as exc:
        raise _invalid(exc) from None
    record = _new_record(params)
    existing = _idempotent([record])[0]
    if existing is IN_PROGRESS:
        raise _in_progress()
    if existing is not None:
        return existing, True
    _check_room(1)
    if not _submit([record]):
        raise _unavailable()
    return record, False


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


def _batch_items() -> list[Any]:
    if request.mimetype in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        items = []
        for number, line in enumerate(request.get_data(as_text=True).splitlines(), start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except ValueError:
                    raise ApiError(400, "invalid_json", f"NDJSON line {number} is not JSON") from None
        return items
    data = _json_body()
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        return cast(list[Any], data["tasks"])
    if isinstance(data, list):
        return data
    raise ApiError(400, "invalid_json", 'the body must be a JSON array of tasks, {"tasks": [...]}, or NDJSON')


@bp.post("/agent/tasks/batch")
def start_batch() -> tuple[Response, int]:
    """Submit up to ``batch_max_items`` tasks; each is validated on its own and the valid ones are accepted."""
    items = _batch_items()
    limit = _settings().batch_max_items
    if not items:
        raise ApiError(422, "invalid_request", "the batch is empty")
    if len(items) > limit:
        raise ApiError(413, "batch_too_large", f"at most {limit} tasks per batch, got {len(items)}")
    schema = current_app.extensions["lodestar.start_schema"]
    batch_id = new_id("batch")
    results: list[dict[str, Any]] = [{} for _ in items]
    errors: list[dict[str, Any]] = []
    records: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"index": i, "error": {"type": "invalid_request", "message": "not a JSON object"}})
            continue
        try:
            records.append((i, _new_record(schema.load(item), batch_id)))
        except ValidationError as exc:
            messages = cast(dict[str, Any], exc.messages)
            errors.append({"index": i, "error": {"type": "invalid_request", "message": _summarise(messages),
                                                 "fields": messages}})
    existing = _idempotent([r for _, r in records])
    fresh = [(i, r) for (i, r), e in zip(records, existing) if e is None]
    for (i, _r), e in zip(records, existing):
        if e is IN_PROGRESS:
            busy = _in_progress()
            errors.append({"index": i, "error": {"type": busy.kind, "message": busy.message}})
        elif e is not None:
            results[i] = {"index": i, "task_id": e["task_id"], "status": e["status"], "reused": True}
    _check_room(len(fresh))
    stored = _submit([r for _, r in fresh]) if fresh else 0
    for n, (i, r) in enumerate(fresh):
        if n < stored:
            results[i] = {"index": i, "task_id": r["task_id"], "status": r["status"]}
        else:
            errors.append({"index": i, "error": {"type": "queue_unavailable",
                                                 "message": "not stored: Redis failed during the batch; resubmit"}})
    if fresh and not stored and not any(results):
        raise _unavailable()
    errors.sort(key=lambda e: e["index"])
    accepted = [r for r in results if r]
    body = {"batch_id": batch_id, "accepted": len(accepted), "rejected": len(errors), "tasks": accepted,
            "errors": errors}
    return jsonify(body), 200 if accepted else 422


@bp.get("/agent/batches/<batch_id>")
def batch_summary(batch_id: str) -> Response:
    """Counts of a batch's tasks by status (for following a batch to its end)."""
    store = _store()
    ids = cast(list[bytes], store.redis.zrange(store.index(g.tenant, "batch", batch_id), 0, -1))
    if not ids:
        raise ApiError(404, "not_found", f"no batch {batch_id}")
    pipe = store.redis.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(store.key(task_id.decode()), "status")
    counts: dict[str, int] = {str(s): 0 for s in Status}
    expired = 0
    for status in pipe.execute():
        if status is None:
            expired += 1
        else:
            counts[status.decode()] += 1
    ended = sum(counts[str(s)] for s in TERMINAL) + expired
    return jsonify({"batch_id": batch_id, "total": len(ids), "counts": counts, "expired": expired,
                    "ended": ended, "done": ended == len(ids)})


# --- read, list, wait --------------------------------------------------------------------------------------------
@bp.get("/agent/tasks/<task_id>")
def retrieve_status(task_id: str) -> Response:
    return jsonify(task_json(_load_task(task_id), _base_url()))


def _time_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be epoch seconds or an ISO 8601 time",
                       fields={name: ["Not a valid time."]}) from None


def _filter_from_args() -> TaskFilter:
    args = request.args
    statuses = tuple(s for raw in args.getlist("status") for s in raw.split(",") if s)
    unknown = [s for s in statuses if s not in {str(x) for x in Status}]
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown status {unknown[0]!r}",
                       fields={"status": [f"Must be one of: {', '.join(str(s) for s in Status)}."]})
    metadata = tuple((k[len("metadata."):], v) for k, v in args.items(multi=True) if k.startswith("metadata."))
    metadata += tuple((k[len("metadata["):-1], v) for k, v in args.items(multi=True)
                      if k.startswith("metadata[") and k.endswith("]"))
    return TaskFilter(statuses=statuses, kind=args.get("kind") or None, model=args.get("model") or None,
                      metadata=metadata, batch_id=args.get("batch_id") or None,
                      created_after=_time_arg("created_after"), created_before=_time_arg("created_before"))


@bp.get("/agent/tasks")
def list_tasks() -> Response:
    """The tenant's tasks, newest first, filtered; ``next_cursor`` pages on (null at the end)."""
    limit_raw = request.args.get("limit", "50")
    max_limit = _settings().list_max_limit
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= max_limit:
        raise ApiError(422, "invalid_request", f"limit must be an integer from 1 to {max_limit}",
                       fields={"limit": [f"Must be between 1 and {max_limit}."]})
    try:
        page, cursor = _store().list_tasks(g.tenant, _filter_from_args(), int(limit_raw), request.args.get("cursor"))
    except ValueError:
        raise ApiError(422, "invalid_request", "malformed cursor", fields={"cursor": ["Not a valid cursor."]}) from None
    base = _base_url()
    return jsonify({"data": [task_json(r, base) for r in page], "next_cursor": cursor, "has_more": cursor is not None})


@bp.get("/agent/tasks/<task_id>/wait")
def wait_task(task_id: str) -> Response:
    """Hold the request until the task ends or ``timeout`` seconds (default 30, at most ``wait_max_timeout``) pass,
    then answer with the task (check ``exit_code``: null means it has not ended)."""
    _load_task(task_id)
    raw = request.args.get("timeout", "30")
    max_timeout = _settings().wait_max_timeout
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1
    if not 0 <= timeout <= max_timeout:
        raise ApiError(422, "invalid_request", f"timeout must be between 0 and {max_timeout:g} seconds",
                       fields={"timeout": [f"Must be between 0 and {max_timeout:g}."]})
    store = _store()

    def ended() -> bool:
        status = cast(bytes | None, store.redis.hget(store.key(task_id), "status"))
        return status is None or status.decode() in TERMINAL

    cast(EndWatcher, current_app.extensions["lodestar.waits"]).wait(task_id, ended, timeout)
    return jsonify(task_json(_load_task(task_id), _base_url()))


# --- control -----------------------------------------------------------------------------------------------------
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
    answer = _control_answer(task_id, control.send_pause(_store(), task_id), "pause")
    webhooks.schedule(_celery(), _store(), task_id, "task.paused")
    return answer


@bp.post("/agent/tasks/<task_id>/resume")
def resume_task(task_id: str) -> Response:
    _load_task(task_id)
    answer = _control_answer(task_id, control.send_resume(_store(), task_id), "resume")
    webhooks.schedule(_celery(), _store(), task_id, "task.running")
    return answer


def _cancel(task_id: str) -> ApplyResult:
    result = control.send_cancel(_store(), task_id)
    if result.ok:
        task_ended(_celery(), _store(), task_id, g.tenant)
    return result


@bp.post("/agent/tasks/<task_id>/cancel")
def cancel_task(task_id: str) -> Response:
    _load_task(task_id)
    return _control_answer(task_id, _cancel(task_id), "cancel")


@bp.post("/agent/tasks/cancel")
def cancel_many() -> Response:
    """Cancel by ``{"task_ids": [...]}`` (at most 10 000) or by ``{"filter": {status, kind, model, metadata,
    batch_id}}`` (active tasks only). Answers which were cancelled and why the others were not."""
    body = _json_object()
    store = _store()
    if isinstance(body.get("task_ids"), list):
        ids = [str(i) for i in body["task_ids"]][: _settings().batch_max_items]
    elif isinstance(body.get("filter"), dict):
        f = body["filter"]
        raw = f.get("status") or ["queued", "running", "paused"]
        statuses = tuple(s for s in raw.split(",") if s) if isinstance(raw, str) else tuple(raw)
        unknown = [s for s in statuses if s not in ("queued", "running", "paused")]
        if unknown or not statuses:
            raise ApiError(422, "invalid_request", "filter.status: only queued, running and paused tasks can be "
                           "cancelled", fields={"filter.status": ["Must be among: queued, running, paused."]})
        flt = TaskFilter(statuses=statuses, kind=f.get("kind"), model=f.get("model"), batch_id=f.get("batch_id"),
                         metadata=tuple((str(k), str(v)) for k, v in (f.get("metadata") or {}).items()))
        ids, cursor = [], None
        while len(ids) < _settings().batch_max_items:
            page, cursor = store.list_tasks(g.tenant, flt, 500, cursor)
            ids += [r["task_id"] for r in page]
            if cursor is None:
                break
    else:
        raise ApiError(422, "invalid_request", 'give "task_ids" (a list) or "filter" (an object)',
                       fields={"task_ids": ["Missing data for required field."]})
    cancelled, skipped = [], []
    for task_id in ids:
        record = store.get(task_id)
        if record is None or record.get("tenant") != g.tenant:
            skipped.append({"task_id": task_id, "reason": "not_found"})
            continue
        result = _cancel(task_id)
        if result.ok:
            cancelled.append(task_id)
        else:
            skipped.append({"task_id": task_id, "reason": f"already {result.status}"})
    return jsonify({"cancelled": cancelled, "skipped": skipped})


@bp.post("/agent/tasks/<task_id>/messages")
def inject_message(task_id: str) -> Response:
    try:
        body = MessageSchema().load(_json_object())
    except ValidationError as exc:
        raise _invalid(exc) from None
    _load_task(task_id)
    return _control_answer(task_id, control.send_message(_store(), task_id, body["message"]), "message")


# --- webhooks and tenant -----------------------------------------------------------------------------------------
@bp.get("/agent/tasks/<task_id>/webhooks")
def webhook_attempts(task_id: str) -> Response:
    """Every delivery attempt of the task's webhooks, oldest first."""
    _load_task(task_id)
    return jsonify({"data": webhooks.attempts(_store(), task_id)})


@bp.post("/agent/tasks/<task_id>/webhooks/redeliver")
def webhook_redeliver(task_id: str) -> tuple[Response, int]:
    """Send the task's current state to its webhook again (a new delivery id)."""
    record = _load_task(task_id)
    if not record.get("webhook_url"):
        raise ApiError(409, "conflict", "the task has no webhook_url", headers={"x-should-retry": "false"})
    delivery = webhooks.schedule(_celery(), _store(), task_id, force=True)
    if delivery is None:
        raise ApiError(503, "queue_unavailable", "could not queue the delivery", headers={"retry-after": "1"})
    return jsonify({"delivery_id": delivery}), 202


@bp.get("/agent/tenant")
def tenant_info() -> Response:
    """The caller's tenant: id, limits, current counts and the webhook signing secret."""
    tenants = cast(Tenants, current_app.extensions["lodestar.tenants"])
    info = tenants.tenant(g.tenant)
    info["webhook_secret"] = tenants.webhook_secret(g.tenant)
    info["counts"] = {s: _store().count(g.tenant, s) for s in ("queued", "running", "paused")}
    return jsonify(info)


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


def _event_hub() -> EventHub:
    return cast(EventHub, current_app.extensions["lodestar.events"])


def _event_json(store: TaskStore, record: dict[str, Any], delivery: Delivery, base_url: str) -> bytes:
    """The event as the clients see it (compact JSON), rendered once per API process and base URL."""
    return delivery.rendered(base_url, lambda: json.dumps(
        _render_event(store, record, delivery.seq, delivery.event, base_url), separators=(",", ":")).encode())


def _sse_frame(store: TaskStore, record: dict[str, Any], delivery: Delivery, base_url: str) -> bytes:
    """The event as one SSE frame (``id:`` and ``data:`` lines), rendered once per API process and base URL."""
    return delivery.rendered("sse " + base_url, lambda: b"id: %d\ndata: %s\n\n" % (
        delivery.seq, _event_json(store, record, delivery, base_url)))


def _sse(record: dict[str, Any], after: int) -> Response:
    store, base_url, hub = _store(), _base_url(), _event_hub()
    keepalive = current_app.config["LODESTAR"].sse_keepalive

    def generate() -> Iterator[bytes]:
        yield b": stream of task events\n\n"
        for delivery in hub.frames(record["task_id"], after, keepalive):
            yield b": keepalive\n\n" if delivery is None else _sse_frame(store, record, delivery, base_url)

    # direct_passthrough: the frames are bytes already, so werkzeug hands the generator to the server as it is
    return Response(generate(), mimetype="text/event-stream", direct_passthrough=True,
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


@sock.route("/agent/tasks/<task_id>/ws", bp=bp)
def task_events_ws(ws: Any, task_id: str) -> None:
    """GET /agent/tasks/{id}/ws: the same events as the SSE stream, one JSON text message each."""
    try:
        record = _load_task(task_id)
        after = _last_event_id()
    except ApiError as exc:
        ws.close(reason=1008, message=exc.message[:120])  # the handshake is done: answer as a WebSocket close
        return
    store, base_url = _store(), _base_url()
    for delivery in _event_hub().frames(task_id, after, _settings().sse_keepalive):
        if delivery is None:
            if not ws.connected:  # the client left while the task was quiet: free this thread
                return
            continue
        ws.send(_event_json(store, record, delivery, base_url).decode())
    ws.close()


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return exc.response()


@bp.errorhandler(RedisError)
def _redis_error(exc: RedisError) -> Response:
    log.error("redis error: %s", exc)
    return ApiError(503, "store_unavailable", "the task store (Redis) is unavailable; retry later",
                    headers={"retry-after": "1"}).response()
