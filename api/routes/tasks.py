"""Starting, reading, listing and waiting for tasks: Lightcone's ``start``, ``start_stream`` and
``retrieve_status``, and Lodestar's batch, batch summary, list and long-poll wait."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, cast

from flask import Blueprint, Response, g, jsonify, request
from marshmallow import ValidationError
from werkzeug.routing import BaseConverter

from api import submission
from api.auth import authenticate_or_shared, load_task, task_bodies
from api.bodies import json_body, json_object, parse_json, raw_body
from api.errors import ApiError, invalid, invalid_field, not_found, summarise
from api.routes.events import sse
from api.state import state
from shared.states import Status
from shared.store import TaskFilter, new_id
from shared.store.queueinfo import REASONS
from shared.task import Task

bp = Blueprint("tasks", __name__)
bp.before_request(authenticate_or_shared)


# --- start and batch -------------------------------------------------------------------------------------------------
def _start_one() -> tuple[Task, bool]:
    """Validate, store and enqueue the request's task; returns ``(task, reused)``."""
    try:
        task = submission.new_task(state().start_schema.load(json_object()))
    except ValidationError as exc:
        raise invalid(exc) from None
    outcome = submission.start([task])[0]
    if outcome.error is not None:
        raise outcome.error
    assert outcome.task is not None
    return outcome.task, outcome.reused


@bp.post("/agent/tasks")
def start_task() -> Response:
    task, reused = _start_one()
    body: dict[str, Any] = {"task_id": task.task_id, "status": str(task.status)}
    if task.idempotency_key:
        body.update(idempotency_key=task.idempotency_key, reused=reused)
    return jsonify(body)


@bp.post("/agent/tasks/stream")
def start_task_stream() -> Response:
    task, _ = _start_one()
    return sse(task, after=0)


def _batch_items() -> tuple[list[Any], float | None]:
    """The batch's items and its ``max_cost_usd`` (only in the ``{"tasks": [...], "max_cost_usd": N}`` form)."""
    if request.mimetype in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        items = []
        depth = state().settings.max_json_depth
        for number, line in enumerate(raw_body().splitlines(), start=1):
            if line.strip():
                try:
                    items.append(parse_json(line, depth))
                except ApiError as exc:
                    exc.message = f"NDJSON line {number}: {exc.message}"
                    raise
        return items, None
    data = json_body()
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        return cast(list[Any], data["tasks"]), _batch_budget(data.get("max_cost_usd"))
    if isinstance(data, list):
        return data, None
    raise ApiError(400, "invalid_json", 'the body must be a JSON array of tasks, {"tasks": [...]}, or NDJSON')


def _batch_budget(value: Any) -> float | None:
    """A batch's ``max_cost_usd``: None, or a number of USD above 0 and at most 1e9, as a task's (422 naming the
    field otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1e9:
        raise invalid_field("max_cost_usd", "max_cost_usd must be a number of USD above 0 and at most 1e9",
                            "Must be greater than 0 and less than or equal to 1000000000.0.")
    return float(value)


@bp.post("/agent/tasks/batch")
def start_batch() -> tuple[Response, int]:
    """Submit up to ``batch_max_items`` tasks; each is validated on its own and the valid ones are accepted."""
    items, budget = _batch_items()
    limit = state().settings.batch_max_items
    if not items:
        raise ApiError(422, "invalid_request", "the batch is empty")
    if len(items) > limit:
        raise ApiError(413, "batch_too_large", f"at most {limit} tasks per batch, got {len(items)}")
    schema = state().start_schema
    batch_id = new_id("batch")
    errors: list[dict[str, Any]] = []
    valid: list[tuple[int, Task]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"index": i, "error": {"type": "invalid_request", "message": "not a JSON object"}})
            continue
        try:
            valid.append((i, submission.new_task(schema.load(item), batch_id)))
        except ValidationError as exc:
            messages = cast(dict[str, Any], exc.messages)
            errors.append({"index": i, "error": {"type": "invalid_request", "message": summarise(messages),
                                                 "fields": messages}})
        except ApiError as exc:  # replay_of names no ended task of the caller's
            errors.append({"index": i, "error": {"type": exc.kind, "message": exc.message,
                                                 "fields": exc.fields or {}}})
    accepted: list[dict[str, Any]] = []
    if budget is not None and valid:
        state().store.budgets.set_batch_budget(batch_id, budget)
    outcomes = submission.start([task for _, task in valid]) if valid else []
    for (i, _), outcome in zip(valid, outcomes, strict=True):
        if outcome.error is not None:
            errors.append({"index": i, "error": {"type": outcome.error.kind, "message": outcome.error.message}})
        elif outcome.task is not None:
            row = {"index": i, "task_id": outcome.task.task_id, "status": str(outcome.task.status)}
            accepted.append({**row, "reused": True} if outcome.reused else row)
    errors.sort(key=lambda e: e["index"])
    accepted.sort(key=lambda r: r["index"])
    body = {"batch_id": batch_id, "accepted": len(accepted), "rejected": len(errors), "tasks": accepted,
            "errors": errors}
    if budget is not None:
        body["max_cost_usd"] = budget
    return jsonify(body), 200 if accepted else 422


@bp.get("/agent/batches/<batch_id>")
def batch_summary(batch_id: str) -> Response:
    """Counts of a batch's tasks by status (for following a batch to its end)."""
    counts = state().store.batch_counts(g.tenant, batch_id)
    if counts is None:
        raise not_found(f"batch {batch_id}")
    budget = state().store.budgets.batch_budget(batch_id)
    if budget is not None:
        counts.update(budget)
    return jsonify(counts)


# --- read, list, wait ------------------------------------------------------------------------------------------------
class TaskIdConverter(BaseConverter):
    """``<task:task_id>``: a path segment that is not one of the names under /agent/tasks/ that are calls of their
    own (batch, cancel, stream), so that GET /agent/tasks/batch is a 405 naming POST, not a lookup of a task
    called "batch" (and OPTIONS lists only the documented methods)."""

    regex = r"(?!(?:batch|cancel|stream)$)[^/]+"


@bp.get("/agent/tasks/<task:task_id>")
def retrieve_status(task_id: str) -> Response:
    """The task; through a share link (``g.shared``), without its idempotency key (the owner's client's)."""
    body = task_bodies([load_task(task_id)])[0]
    if g.get("shared"):
        body["idempotency_key"] = None
    return jsonify(body)


DEFAULT_WAIT = 30.0
"""Seconds GET /agent/tasks/{id}/wait holds a request that gives no ``timeout`` (capped by ``wait_max_timeout``)."""
EPOCH_MAX = 1e11
"""Largest epoch-seconds time a query accepts (the year 5138); the OpenAPI document says so."""
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
DATE_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                       r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
"""RFC 3339 ``date-time`` (what ``format: date-time`` means in the OpenAPI document)."""


def _time_arg(name: str) -> float | None:
    """A query parameter that is a time: epoch seconds (0 to :data:`EPOCH_MAX`) or an RFC 3339 date-time with an
    offset ("2026-11-28T08:20:39Z"). Raises ApiError 422 naming it otherwise (also for nan and infinities)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if _NUMBER.fullmatch(raw):
        value = float(raw)
        if not 0 <= value <= EPOCH_MAX:  # also refuses inf (1e999)
            raise invalid_field(name, f"{name} must be epoch seconds from 0 to {EPOCH_MAX:.0f}",
                                f"Must be between 0 and {EPOCH_MAX:.0f}.")
        return value
    match = DATE_TIME.fullmatch(raw)
    if match:
        head, second, fraction, offset = match.groups()
        second = min(second, "59")  # a leap second (:60) counts as the second before it
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            return datetime.fromisoformat(f"{head}:{second}{(fraction or '')[:7]}{offset}").timestamp()
        except ValueError:
            pass  # a day or hour that does not exist
    raise invalid_field(name, f"{name} must be epoch seconds or an RFC 3339 date-time (2026-11-28T08:20:39Z)",
                        "Not a valid time.")


def _status_args() -> tuple[str, ...]:
    """The ``status`` query parameters (comma-separated, repeatable)."""
    return tuple(s for raw in request.args.getlist("status") for s in raw.split(",") if s)


def filter_from_args() -> TaskFilter:
    """The list filter of the query string: ``status`` (comma-separated, repeatable), ``kind``, ``model``,
    ``batch_id``, ``metadata.<key>`` or ``metadata[<key>]``, ``created_after``, ``created_before``,
    ``wait_reason`` (queued tasks whose wait reason starts with it: it narrows ``status`` to queued, and a
    status list without queued then matches nothing)."""
    args = request.args
    statuses = _status_args()
    unknown = [s for s in statuses if s not in {str(x) for x in Status}]
    if unknown:
        raise invalid_field("status", f"unknown status {unknown[0]!r}",
                            f"Must be one of: {', '.join(str(s) for s in Status)}.")
    metadata = tuple((k[len("metadata."):], v) for k, v in args.items(multi=True) if k.startswith("metadata."))
    metadata += tuple((k[len("metadata["):-1], v) for k, v in args.items(multi=True)
                      if k.startswith("metadata[") and k.endswith("]"))
    wait_reason = args.get("wait_reason") or None
    if wait_reason is not None:
        if not any(r.startswith(wait_reason) or wait_reason.startswith(r) for r in REASONS):
            raise invalid_field("wait_reason", f"unknown wait_reason {wait_reason!r}",
                                f"Must start like one of: {', '.join(REASONS)}.")
        # only queued tasks wait: with a status list that leaves out queued, nothing matches (see list_tasks)
        if not statuses or "queued" in statuses:
            statuses = ("queued",)
    return TaskFilter(statuses=statuses, kind=args.get("kind") or None, model=args.get("model") or None,
                      metadata=metadata, batch_id=args.get("batch_id") or None,
                      created_after=_time_arg("created_after"), created_before=_time_arg("created_before"),
                      wait_reason=wait_reason)


def _literal(text: str) -> str:
    """``text`` as a regular expression both Python and ECMA 262 (in unicode mode) read alike."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}/" else c for c in text)


def _prefixes(text: str) -> str:
    """A regular expression matching every non-empty prefix of ``text`` ("ab" -> "a(?:b)?")."""
    out = ""
    for ch in reversed(text):
        out = _literal(ch) + (f"(?:{out})?" if out else "")
    return out


WAIT_REASON_PATTERN = "^(?:" + "|".join([_prefixes(r) + "|" + _literal(r) + r"[\s\S]*" for r in REASONS]) + ")?$"
"""What the list's ``wait_reason`` filter takes (the OpenAPI document's ``pattern``, ECMA 262 and Python alike):
empty, a prefix of a reason in ``REASONS`` ("queued"), or a reason and more ("queued behind 3")."""


@bp.get("/agent/tasks")
def list_tasks() -> Response:
    """The tenant's tasks, newest first, filtered; ``next_cursor`` pages on (null at the end)."""
    limit_raw = request.args.get("limit", "50")
    max_limit = state().settings.list_max_limit
    if not re.fullmatch(r"[0-9]{1,9}", limit_raw) or not 1 <= int(limit_raw) <= max_limit:
        raise invalid_field("limit", f"limit must be an integer from 1 to {max_limit}",
                            f"Must be between 1 and {max_limit}.")
    flt = filter_from_args()
    if flt.wait_reason is not None and flt.statuses != ("queued",):
        return jsonify({"data": [], "next_cursor": None, "has_more": False})  # only queued tasks have a wait reason
    try:
        page, cursor = state().store.list_tasks(g.tenant, flt, int(limit_raw), request.args.get("cursor"))
    except ValueError:
        raise invalid_field("cursor", "malformed cursor", "Not a valid cursor.") from None
    return jsonify({"data": task_bodies(page), "next_cursor": cursor, "has_more": cursor is not None})


@bp.get("/agent/tasks/<task_id>/wait")
def wait_task(task_id: str) -> Response:
    """Hold the request until the task ends or ``timeout`` seconds (default :data:`DEFAULT_WAIT`, at most
    ``wait_max_timeout``) pass, then answer with the task (check ``exit_code``: null means it has not ended)."""
    load_task(task_id)
    max_timeout = state().settings.wait_max_timeout
    raw = request.args.get("timeout", f"{min(DEFAULT_WAIT, max_timeout):g}")
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1
    if not 0 <= timeout <= max_timeout:  # also refuses nan
        raise invalid_field("timeout", f"timeout must be between 0 and {max_timeout:g} seconds",
                            f"Must be between 0 and {max_timeout:g}.")
    store = state().store

    def ended() -> bool:
        status = store.status(task_id)
        return status is None or status.ended

    state().waits.wait(task_id, ended, timeout)
    return jsonify(task_bodies([load_task(task_id)])[0])
