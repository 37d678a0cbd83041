"""Starting tasks for the caller's tenant: build the records, honour idempotency keys and the tenant's queue limit,
store and enqueue (``TaskStore.submit``). The routes parse the request and answer; this is the part in between."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from flask import g
from redis.exceptions import RedisError

from api.errors import ApiError, unavailable
from api.state import state
from shared.schemas import KIND_DEFAULTED
from shared.secrets import seal
from shared.store import IN_PROGRESS, InProgress, new_id, new_task_id, now
from shared.store.budgets import seconds_to_next_day
from shared.task import Task


@dataclass(frozen=True)
class Started:
    """One start's outcome: the task (an earlier one when ``reused``: its idempotency key had created it), or
    ``error`` (an ApiError to report for this item)."""

    task: Task | None
    reused: bool = False
    error: ApiError | None = None


def new_task(params: Mapping[str, Any], batch_id: str | None = None) -> Task:
    """A queued task of the caller's tenant from validated start parameters (its ``secrets`` sealed; a replay's
    environment taken from its recording: :func:`replay_params`). A task that names an environment of the tenant
    and gives no ``kind`` takes the environment's kind.

    Raises:
        ApiError: 404 or 409 on ``replay_of`` (:func:`replay_params`).
    """
    if params.get("replay_of"):
        params = replay_params(params)
    principal = g.principal
    sealed = seal(params["secrets"], state().settings.secrets_key) if params.get("secrets") else None
    task = Task.from_request(params, task_id=new_task_id(), tenant=principal.tenant, created_at=now(),
                             batch_id=batch_id, default_webhook_url=principal.webhook_url, sealed_secrets=sealed)
    if params.get(KIND_DEFAULTED) and task.environment_id:
        env = state().store.environments.get(task.tenant, task.environment_id)
        if env is not None and env.kind != task.kind:
            task = replace(task, kind=env.kind)
    return task


def replay_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The start parameters of a replay: ``replay_of`` must name an ended task of the caller's tenant (another
    tenant's is as unknown as a missing one); the replay runs in the recording's environment (its kind, start URL
    and viewport, and its allowed_domains unless the request gives some), has one step more than the recording
    (a last step to finish in) and runs the replay agent (``agent_type: "replay"``, no model, no cost).

    Raises:
        ApiError: 404 naming ``replay_of`` when it names no task of the caller's; 409 (``x-should-retry: true``)
            when that task has not ended yet.
    """
    source_id = params["replay_of"]
    source = state().store.get(source_id)
    if source is None or source.tenant != g.tenant:
        reason = f"no task {source_id} (or it expired)"
        raise ApiError(404, "not_found", f"replay_of: {reason}", fields={"replay_of": [reason]})
    if not source.ended:
        reason = f"task {source_id} is {source.status}: only an ended task's recording can be replayed"
        raise ApiError(409, "conflict", f"replay_of: {reason}", fields={"replay_of": [reason]},
                       headers={"x-should-retry": "true"})
    kept = {k: v for k, v in params.items() if k != KIND_DEFAULTED}  # the kind is the recording's, not an environment's
    return {**kept, "kind": source.kind, "start_url": source.start_url, "viewport_width": source.viewport_width,
            "viewport_height": source.viewport_height, "max_steps": source.steps_taken + 1, "agent_type": "replay",
            "allowed_domains": params.get("allowed_domains") or source.allowed_domains, "output_schema": None,
            "max_cost_usd": None}


def in_progress() -> ApiError:
    return ApiError(409, "idempotency_key_in_use", "a request with this idempotency_key is still storing its "
                    "task; retry in a moment", headers={"retry-after": "1"})


def start(tasks: list[Task]) -> list[Started]:
    """Start ``tasks`` (one request's worth) and return their outcomes in order. Items whose idempotency key is
    known get the earlier task (``reused``); the others are stored and queued in chunks; items that could not
    be stored (Redis failed midway) get a ``queue_unavailable`` error to resubmit.

    Raises:
        ApiError: 429 when the tenant's daily budget is spent, or the new tasks do not fit under its
            ``max_queued``; 503 when none could be stored (a task refused for its environment is an item's
            error: 404, 409 or 422, see ``_take_environments``); a RedisError (answered 503) when Redis is down before
            anything was written.
    """
    st = state()
    check_daily_budget()
    existing = st.store.claim_idempotency_keys(tasks)
    fresh = [task for task, earlier in zip(tasks, existing, strict=True) if earlier is None]
    _check_room(len(fresh))
    fresh, refused = _take_environments(fresh)
    stored = st.store.submit(fresh, st.dispatcher.messages) if fresh else 0
    if stored and st.dispatcher.messages is None:  # the broker is not the store's Redis: send the messages now
        st.dispatcher.send_new(fresh[:stored])
    _let_go(fresh[stored:])
    if fresh and not stored and len(fresh) + len(refused) == len(tasks):
        raise unavailable()
    stored_tasks = {task.task_id: task for task in fresh[:stored]}
    outcomes = []
    for task, earlier in zip(tasks, existing, strict=True):
        if isinstance(earlier, InProgress):
            outcomes.append(Started(None, error=in_progress()))
        elif earlier is not None:
            outcomes.append(Started(earlier, reused=True))
        elif task.task_id in refused:
            outcomes.append(Started(None, error=refused[task.task_id]))
        elif task.task_id in stored_tasks:
            outcomes.append(Started(stored_tasks[task.task_id]))
        else:
            outcomes.append(Started(None, error=ApiError(503, "queue_unavailable",
                                                         "not stored: Redis failed during the batch; resubmit")))
    return outcomes


def _take_environments(tasks: list[Task]) -> tuple[list[Task], dict[str, ApiError]]:
    """The tasks that may go on, with the environments they need: a persistent task takes (holds) its
    ``environment_id``, or a new environment made for it; a task that only restores one must name an environment of
    the tenant and of its kind. Returns them (with their ``environment_id`` set) and the refused ones' errors by
    task id (their idempotency keys are freed): 404 (no such environment), 422 (another kind), 409 (a persistent
    task holds it)."""
    environments = state().store.environments
    going: list[Task] = []
    refused: dict[str, ApiError] = {}
    for task in tasks:
        env_id = task.environment_id
        if task.persistent:
            create = env_id is None
            if create:
                task = replace(task, environment_id=new_id("env"))
            assert task.environment_id is not None
            take = environments.take(task.environment_id, task.tenant, task.kind, task.task_id, create=create)
            outcome, detail = take.outcome, take.detail
        elif env_id is not None:
            env = environments.get(task.tenant, env_id)
            outcome, detail = ("missing", "") if env is None else ("kind", env.kind) if env.kind != task.kind else (
                "ok", "")
        else:
            outcome, detail = "ok", ""
        if outcome == "ok":
            going.append(task)
        else:
            refused[task.task_id] = _environment_error(outcome, detail, env_id or "")
    if refused:
        state().store.forget_idempotency_keys([t for t in tasks if t.task_id in refused])
    return going, refused


def _environment_error(outcome: str, detail: str, env_id: str) -> ApiError:
    if outcome == "missing":
        return ApiError(404, "not_found", f"no environment {env_id} (or it expired)",
                        fields={"environment_id": ["No such environment."]})
    if outcome == "kind":
        return ApiError(422, "invalid_request", f"environment {env_id} is a {detail} environment; start a {detail} "
                        "task with it", fields={"environment_id": [f"A {detail} environment."]})
    return ApiError(409, "environment_in_use", f"environment {env_id} is in use by task {detail}, which saves into "
                    "it; start this task when that one has ended", fields={"environment_id": [f"In use by {detail}."]},
                    headers={"x-should-retry": "false"})


def _let_go(tasks: list[Task]) -> None:
    """Let go of the environments of tasks that were not stored after all (Redis failed midway)."""
    try:
        for task in tasks:
            if task.persistent and task.environment_id:
                state().store.environments.release(task.environment_id, task.tenant, task.task_id)
    except RedisError:  # the holds end by themselves: a holder never stored holds nothing after a minute
        pass


def check_daily_budget() -> None:
    """Raise ApiError 429 (``retry-after``: until the next UTC midnight) when the tenant has a daily budget and its
    model calls already cost that much today. Tenants without a budget cost nothing here."""
    budget = g.principal.daily_budget_usd
    if budget > 0:
        spent = state().store.budgets.day_spent(g.tenant)
        if spent >= budget:
            raise ApiError(429, "daily_budget_spent",
                           f"the tenant's daily budget of ${budget:g} is spent (${spent:.6g} today, UTC); new tasks "
                           "are refused until 00:00 UTC", headers={"retry-after": str(seconds_to_next_day()),
                                                                    "x-should-retry": "false"})


def _check_room(new: int) -> None:
    limit = g.principal.max_queued
    if limit and new and state().store.count(g.tenant, "queued") + new > limit:
        raise ApiError(429, "queue_full", f"at most {limit} queued tasks per tenant; wait for some to start",
                       headers={"retry-after": "5"})


__all__ = ["IN_PROGRESS", "Started", "in_progress", "new_task", "replay_params", "start"]
