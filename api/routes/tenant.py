"""The caller's tenant and its webhooks: limits and counts, the signing secret, delivery attempts, redelivery."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from api.auth import authenticate, load_task
from api.errors import ApiError
from api.state import state
from shared import webhooks
from shared.states import Status

bp = Blueprint("tenant", __name__)
bp.before_request(authenticate)


@bp.get("/agent/tasks/<task_id>/webhooks")
def webhook_attempts(task_id: str) -> Response:
    """Every delivery attempt of the task's webhooks, oldest first."""
    load_task(task_id)
    return jsonify({"data": webhooks.attempts(state().store, task_id)})


@bp.post("/agent/tasks/<task_id>/webhooks/redeliver")
def webhook_redeliver(task_id: str) -> tuple[Response, int]:
    """Send the task's current state to its webhook again (a new delivery id)."""
    task = load_task(task_id)
    if not task.webhook_url:
        raise ApiError(409, "conflict", "the task has no webhook_url", headers={"x-should-retry": "false"})
    st = state()
    delivery = webhooks.schedule(st.dispatcher, task, force=True)
    if delivery is None:
        raise ApiError(503, "queue_unavailable", "could not queue the delivery", headers={"retry-after": "1"})
    return jsonify({"delivery_id": delivery}), 202


@bp.get("/agent/tenant")
def tenant_info() -> Response:
    """The caller's tenant: id, limits, current counts and the webhook signing secret."""
    store = state().store
    info = store.tenants.tenant(g.tenant)
    info["webhook_secret"] = store.tenants.webhook_secret(g.tenant)
    info["counts"] = {str(s): store.count(g.tenant, s) for s in Status}  # ended ones: until they expire
    info["spent_today_usd"] = round(store.budgets.day_spent(g.tenant), 8)
    return jsonify(info)
