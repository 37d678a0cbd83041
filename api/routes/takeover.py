"""The console's calls on one task: human takeover (``POST /agent/tasks/{id}/actions``: one action performed in a
paused task's own browser or desktop by its worker) and share links (``POST /agent/tasks/{id}/share``: a signed,
expiring, read-only URL of the task's console page)."""

from __future__ import annotations

import math
import time

from flask import Blueprint, Response, jsonify
from marshmallow import ValidationError

from api.auth import authenticate, base_url, load_task, urls
from api.bodies import json_object, raw_body
from api.errors import ApiError, invalid, invalid_field, not_found
from api.state import state
from shared.console import ActionSchema, make_share_schema
from shared.signing import share_resource
from shared.states import Status
from shared.store import new_id
from shared.task import Task

bp = Blueprint("takeover", __name__)
bp.before_request(authenticate)

_action_schema = ActionSchema()


def _check_viewport(task: Task, action: dict) -> None:
    """422 naming ``x`` / ``y`` (``x2`` / ``y2``) when a point is outside the task's viewport."""
    for x_name, y_name in (("x", "y"), ("x2", "y2")):
        x, y = action.get(x_name), action.get(y_name)
        if x is not None and x >= task.viewport_width:
            raise invalid_field(x_name, f"{x_name} must be below the viewport width ({task.viewport_width})",
                                f"Must be less than {task.viewport_width}.")
        if y is not None and y >= task.viewport_height:
            raise invalid_field(y_name, f"{y_name} must be below the viewport height ({task.viewport_height})",
                                f"Must be less than {task.viewport_height}.")


def _not_paused(status: str, outcome: str) -> ApiError:
    """409 for an action on a task that is not paused ("not_paused") or that no worker holds ("released")."""
    why = ("no worker holds it any more (released after LODESTAR_PAUSE_TIMEOUT): resume it, then pause it again"
           if outcome == "released" else "actions are taken only while the task is paused")
    return ApiError(409, "conflict", f"cannot act on a task that is {status}: {why}",
                    headers={"x-should-retry": "false"})


@bp.post("/agent/tasks/<task_id>/actions")
def human_action(task_id: str) -> Response:
    """Perform one action (the ``Action`` schema's JSON form) in a paused task's environment, through its worker;
    answers the step it became, its result and the new screenshot's URL once the worker has done it.

    Raises:
        ApiError: 404 (no such task of the caller's); 422 (a bad action, naming the field); 409 when the task is
            not paused, is a replay (``replay_of``), or is paused with no worker holding it (released after
            ``pause_timeout``: resume it) or ended while the action waited; 504 when its worker did not answer
            within ``takeover_timeout``.
    """
    task = load_task(task_id)
    st = state()
    store, hub = st.store, st.events
    if task.status != Status.PAUSED:  # before the body's own rules: acting is only for paused tasks
        raise _not_paused(str(task.status), "not_paused")
    if task.replay_of:  # a replay checks every step against its recording: a user's step would be a divergence
        raise ApiError(409, "conflict", "a replay (replay_of) cannot be taken over: cancel it, or take over the "
                       "recorded task's own run", headers={"x-should-retry": "false"})
    try:
        action = _action_schema.load(json_object())
    except ValidationError as exc:
        raise invalid(exc) from None
    _check_viewport(task, action)
    after = store.last_seq(task_id)
    request_id = new_id("act")
    handed = store.takeover.submit(task_id, request_id, action)
    if handed.outcome == "missing":
        raise not_found(f"task {task_id}")
    if handed.outcome != "queued":
        raise _not_paused(handed.status, handed.outcome)
    deadline = time.monotonic() + st.settings.takeover_timeout
    for delivery in hub.frames(task_id, after, keepalive=min(1.0, st.settings.takeover_timeout)):
        if delivery is not None:
            event = delivery.event
            if event.get("type") == "step" and event.get("request_id") == request_id:
                results = event.get("results") or [{}]
                return jsonify({"step": event["step"], "result": results[0],
                                "screenshot_url": urls()(task, int(event["step"])), "url": event.get("url"),
                                "status": str(store.status(task_id) or "")})
            if delivery.is_end:
                break
        if time.monotonic() >= deadline:
            store.takeover.withdraw(task_id, handed.entry)
            raise ApiError(504, "worker_timeout", f"the task's worker did not perform the action within "
                           f"{st.settings.takeover_timeout:g} s (LODESTAR_TAKEOVER_TIMEOUT); it was withdrawn "
                           "unless the worker had already taken it")
    status = store.status(task_id)
    raise ApiError(409, "conflict", f"the task ended ({status}) before its worker performed the action",
                   headers={"x-should-retry": "false"})


@bp.post("/agent/tasks/<task_id>/share")
def share_task(task_id: str) -> Response:
    """A signed, expiring, read-only link to the task's console page (``{"expires_in": seconds}``, optional),
    for people without a key: it opens the page, the task's record and its events, nothing else."""
    task = load_task(task_id)
    st = state()
    body = json_object() if raw_body().strip() else {}  # the body is optional
    try:
        params = make_share_schema(st.settings).load(body)
    except ValidationError as exc:
        raise invalid(exc) from None
    expires_in = params.get("expires_in", st.settings.share_ttl)
    expires = math.ceil(time.time()) + int(expires_in)
    query = st.signer.query(task.tenant, share_resource(task_id), expires)
    return jsonify({"url": f"{base_url()}/console/tasks/{task_id}?{query}", "expires_at": expires})
