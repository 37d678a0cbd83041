"""Steering running tasks: Lightcone's ``pause``, ``resume`` and ``inject_message``, and Lodestar's cancel (one task,
or many by ids or by filter). Each call writes the desired state and notifies the task's worker
(``shared/control.py``)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from marshmallow import ValidationError

from api.auth import authenticate, load_task
from api.bodies import json_object
from api.errors import ApiError, invalid, invalid_field, not_found
from api.state import state
from shared import control, webhooks
from shared.queue import task_ended
from shared.schemas import CANCELLABLE, IDEMPOTENCY_KEY_PATTERN
from shared.states import Status
from shared.store import ApplyResult, TaskFilter
from shared.task import Task

bp = Blueprint("control", __name__)
bp.before_request(authenticate)


ALREADY = {"pause": frozenset({Status.PAUSED}), "resume": frozenset({Status.RUNNING, Status.QUEUED}),
           "cancel": frozenset({Status.CANCELLED}), "message": frozenset()}
"""Statuses in which a control call has nothing left to do: a retried pause finds the task paused, a resume finds
it running (or queued: not paused, it will run), a cancel finds it cancelled. These answer 200, not 409."""


def _answer(task_id: str, result: ApplyResult, verb: str) -> tuple[Response, bool]:
    """``({"status"}, changed)`` after a control write: ``changed`` is False when the task was already where the
    call asked (:data:`ALREADY`; a retry) or the write was a replay of an earlier one.

    Raises:
        ApiError: 404 (gone); 409 when the task's status cannot reach what was asked, with ``x-should-retry:
            false`` (it ended), except a pause of a queued task (``x-should-retry: true``, ``retry-after``: it
            starts soon).
    """
    if not result.found:
        raise not_found(f"task {task_id}")
    if not result.ok:
        if result.status in ALREADY[verb]:
            return jsonify({"status": result.status}), False
        retry = verb == "pause" and result.status == Status.QUEUED  # it will start soon: waiting can help
        headers = {"x-should-retry": "true", "retry-after": "1"} if retry else {"x-should-retry": "false"}
        raise ApiError(409, "conflict", f"cannot {verb} a task that is {result.status}", headers=headers)
    return jsonify({"status": str(state().store.status(task_id) or result.status)}), not result.replayed


@bp.post("/agent/tasks/<task_id>/pause")
def pause_task(task_id: str) -> Response:
    """Pause a running task; a paused one answers 200 as it is (a retried pause)."""
    task = load_task(task_id)
    st = state()
    answer, changed = _answer(task_id, control.send_pause(st.store, task_id), "pause")
    if changed:
        webhooks.schedule(st.dispatcher, task, "task.paused")
    return answer


@bp.post("/agent/tasks/<task_id>/resume")
def resume_task(task_id: str) -> Response:
    """Resume a paused task: its worker continues; or, when no worker holds it any more (released after
    ``pause_timeout``, or its worker shut down), it is queued again and starts afresh on the next free worker. A
    running or queued task answers 200 as it is (nothing to resume)."""
    task = load_task(task_id)
    st = state()
    result = control.send_resume(st.store, task_id)
    answer, changed = _answer(task_id, result, "resume")
    if result.requeued:
        st.dispatcher.dispatch([task_id])
    elif changed:
        webhooks.schedule(st.dispatcher, task, "task.running")
    return answer


def _cancel(task: Task) -> ApplyResult:
    st = state()
    result = control.send_cancel(st.store, task.task_id)
    if result.ok:
        task_ended(st.dispatcher, task, result.delivery_id)
    return result


@bp.post("/agent/tasks/<task_id>/cancel")
def cancel_task(task_id: str) -> Response:
    """Cancel a queued, running or paused task; a cancelled one answers 200 as it is (a retried cancel)."""
    return _answer(task_id, _cancel(load_task(task_id)), "cancel")[0]


def _filtered_ids(f: dict[str, Any]) -> list[str]:
    """The ids of the caller's active tasks that match a loaded bulk-cancel ``filter`` (at most
    ``batch_max_items``)."""
    flt = TaskFilter(statuses=f.get("status") or CANCELLABLE, kind=f.get("kind"), model=f.get("model"),
                     batch_id=f.get("batch_id"), metadata=tuple((f.get("metadata") or {}).items()))
    store, most = state().store, state().settings.batch_max_items
    ids: list[str] = []
    cursor = None
    while len(ids) < most:
        page, cursor = store.list_tasks(g.tenant, flt, 500, cursor)
        ids += [task.task_id for task in page]
        if cursor is None:
            break
    return ids[:most]


@bp.post("/agent/tasks/cancel")
def cancel_many() -> Response:
    """Cancel by ``{"task_ids": [...]}`` (at most ``batch_max_items``) or by ``{"filter": {status, kind, model,
    metadata, batch_id}}`` (active tasks only; ``shared.schemas.make_cancel_schema``). Answers which were
    cancelled and why the others were not (an already cancelled task is skipped as ``already cancelled``)."""
    try:
        body = state().cancel_schema.load(json_object())
    except ValidationError as exc:
        raise invalid(exc) from None
    ids = body["task_ids"] if "task_ids" in body else _filtered_ids(body["filter"])
    store = state().store
    cancelled, skipped = [], []
    for task_id in ids:
        task = store.get(task_id)
        if task is None or task.tenant != g.tenant:
            skipped.append({"task_id": task_id, "reason": "not_found"})
            continue
        result = _cancel(task)
        if result.ok:
            cancelled.append(task_id)
        else:
            skipped.append({"task_id": task_id, "reason": f"already {result.status}"})
    return jsonify({"cancelled": cancelled, "skipped": skipped})


@bp.post("/agent/tasks/<task_id>/messages")
def inject_message(task_id: str) -> Response:
    """Queue a message for the agent. With an ``Idempotency-Key`` header (:data:`IDEMPOTENCY_KEY_PATTERN`), a
    repeated key for the task delivers nothing more and answers as the first call did (``Idempotent-Replayed:
    true``)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise invalid_field("Idempotency-Key", "Idempotency-Key must be 1 to 255 printable ASCII characters",
                            "Not a valid idempotency key.")
    try:
        body = state().message_schema.load(json_object())
    except ValidationError as exc:
        raise invalid(exc) from None
    load_task(task_id)
    result = control.send_message(state().store, task_id, body["message"], key)
    answer = _answer(task_id, result, "message")[0]
    if result.replayed:
        answer.headers["Idempotent-Replayed"] = "true"
    return answer
