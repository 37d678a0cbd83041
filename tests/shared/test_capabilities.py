"""The store's parts of issue 15 on a real Redis: the queue of each kind and the wait reasons read from it, model calls
recorded as they return (usage, cost, batch and daily sums, fencing), budgets, provider rate limits and retry-after
blocks shared through Redis, and the Lua and Python spelling the queue alike."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from shared.models import ProviderLimit, registry
from shared.settings import Settings, load_settings
from shared.states import ExitCode, Status
from shared.store import TaskStore
from shared.store.budgets import utc_day
from shared.store.queueinfo import queue_score
from tests.conftest import make_task

pytestmark = pytest.mark.redis


def positions(store: TaskStore, *task_ids: str) -> list[Any]:
    tasks = [store.get(i) for i in task_ids]
    return [(d["queue_position"], d["wait_reason"]) for d in store.queue.describe([t for t in tasks if t])]


def test_queue_positions_follow_priority_then_age_and_each_kind_has_its_own_queue(store: TaskStore) -> None:
    # Given a browser worker's heartbeat and queued tasks of several priorities, created in this order
    store.queue.heartbeat(["browser"], "w1")
    low = make_task(store, priority="low")
    first = make_task(store)
    second = make_task(store)
    high = make_task(store, priority="high")
    desktop = make_task(store, kind="desktop")
    # Then the high one is next, the normal ones follow in order, the low one last; desktop has no worker
    assert positions(store, high, first, second, low) == [
        (1, "queued behind 0 tasks"), (2, "queued behind 1 tasks"), (3, "queued behind 2 tasks"),
        (4, "queued behind 3 tasks")]
    assert positions(store, desktop) == [(1, "no worker for kind desktop")]
    # When the first starts and another is cancelled, those behind them move up (common.lua move_status)
    assert store.claim(high, "w1")[0] == "started"
    assert store.finish(second, ExitCode.CANCELLED).ok
    assert positions(store, first, low) == [(1, "queued behind 0 tasks"), (2, "queued behind 1 tasks")]
    assert positions(store, high, second) == [(None, None), (None, None)]
    # And a running task requeued (its worker lost) is queued again, at its first place
    store.redis.delete(store.keys.lease(high))
    assert store.recovery.requeue(high, "lost", "lost").outcome == "requeued"
    assert positions(store, high, first) == [(1, "queued behind 0 tasks"), (2, "queued behind 1 tasks")]
    assert store.queue.depth("browser") == 3


def test_the_lua_and_python_score_the_queue_alike(store: TaskStore) -> None:
    # Given a task stored by Python (create_many) and one queued again by Lua (a resume of a released task)
    created = make_task(store, priority="low")
    resumed = make_task(store, Status.PAUSED, priority="low")
    found, _, _, outcome = store.recovery.resume(resumed)
    assert (found, outcome) == (1, "requeued")
    for task_id in (created, resumed):
        task = store.get(task_id)
        assert task is not None
        score = store.redis.zscore(store.keys.queue("browser"), task_id)
        assert score is not None and math.isclose(score, queue_score("low", task.created_at), abs_tol=1e-3)


def test_a_deferred_task_waits_for_its_tenant_out_of_the_queue_and_returns_when_released(store: TaskStore) -> None:
    store.queue.heartbeat(["browser"], "w1")
    store.tenants.set_limits("t_test", max_running=1)
    running, waiting = make_task(store), make_task(store)
    assert store.claim(running, "w1")[0] == "started"
    assert store.claim(waiting, "w2")[0] == "deferred"
    assert positions(store, waiting) == [(None, "tenant max_running reached")]
    assert store.finish(running, ExitCode.COMPLETED).ok
    assert store.next_deferred("t_test") == [waiting]
    assert positions(store, waiting) == [(1, "queued behind 0 tasks")]


def test_the_list_filters_queued_tasks_by_wait_reason(store: TaskStore) -> None:
    from shared.store import TaskFilter

    store.queue.heartbeat(["browser"], "w1")
    browser, desktop = make_task(store), make_task(store, kind="desktop")
    make_task(store, Status.RUNNING)
    page, _ = store.list_tasks("t_test", TaskFilter(statuses=("queued",), wait_reason="no worker"), 10)
    assert [t.task_id for t in page] == [desktop]
    page, _ = store.list_tasks("t_test", TaskFilter(statuses=("queued",), wait_reason="queued behind"), 10)
    assert [t.task_id for t in page] == [browser]


def test_a_queued_task_of_a_blocked_or_full_model_is_rate_limited(redis_url: str) -> None:
    models = json.dumps({"openai-compat/slow": {"base_url": "http://x.test/v1", "rpm": 1}})
    store = TaskStore.from_settings(load_settings(redis_url=redis_url, models=models))
    store.queue.heartbeat(["browser"], "w1")
    task = make_task(store, model="openai-compat/slow")
    offline = make_task(store, agent_type="scripted")
    assert positions(store, task)[0][1] == "queued behind 0 tasks"
    spec = registry(store.settings).resolve("openai-compat/slow")
    assert spec is not None and spec.limit() == ProviderLimit("openai-compat", "openai-compat/slow", 1, None)
    assert store.limits.acquire(spec.limit(), 10) == (0.0, "")  # the window's one request
    assert positions(store, task, offline) == [(1, "rate limited"), (2, "queued behind 1 tasks")]


def test_a_call_is_recorded_as_it_returns_on_the_task_its_batch_and_its_tenants_day(store: TaskStore) -> None:
    # Given a running task of a batch with a budget, held by worker w1
    store.budgets.set_batch_budget("batch_b", 0.01)
    task_id = make_task(store, Status.RUNNING, holder="w1", batch_id="batch_b", max_cost_usd=0.02)
    call = {"input_tokens": 1000, "output_tokens": 50, "total_tokens": 1050, "calls": 1, "cost_usd": 0.00375}
    # When two calls return
    assert store.budgets.spend(task_id, call, holder="w1")[0] == 1
    found, cost = store.budgets.spend(task_id, call, holder="w1")
    # Then the record, the batch and the tenant's day add them up
    task = store.get(task_id)
    assert task is not None and found == 1
    assert task.usage == {"input_tokens": 2000, "output_tokens": 100, "total_tokens": 2100, "calls": 2}
    assert cost is not None and math.isclose(task.cost or 0, 0.0075) and math.isclose(cost, 0.0075)
    assert store.budgets.batch_budget("batch_b") == {"max_cost_usd": 0.01, "spent_usd": 0.0075}
    assert math.isclose(store.budgets.day_spent("t_test"), 0.0075)
    # And the budgets say which one the next call would go over
    state = store.budgets.state(task)
    assert state.exceeded_by(0.002) is None
    assert "the batch's max_cost_usd reached: batch batch_b" in (state.exceeded_by(0.003, "batch_b") or "")
    assert (state.exceeded_by(0.02) or "").startswith("max_cost_usd reached: the task spent $0.0075 of $0.02")
    store.tenants.set_limits("t_test", daily_budget_usd=0.008)
    assert "the tenant's daily budget reached" in (store.budgets.state(task).exceeded_by(0.001) or "")
    # And a worker that lost the lease writes nothing
    assert store.budgets.spend(task_id, call, holder="w2") == (-2, None)
    assert store.get(task_id) == task


def test_a_call_without_a_price_counts_tokens_only(store: TaskStore) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    store.budgets.spend(task_id, {"input_tokens": 10, "output_tokens": 5, "calls": 1, "cost_usd": None}, "w1")
    task = store.get(task_id)
    assert task is not None and task.cost is None and task.usage == {
        "input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "calls": 1}
    assert store.redis.exists(store.keys.spent("t_test", utc_day())) == 0


def test_rate_limit_windows_and_retry_after_blocks_are_shared(settings: Settings, store: TaskStore) -> None:
    # Given two workers' stores on one Redis and a limit of 2 requests and 1000 tokens per window
    other = TaskStore.from_settings(settings)
    limit = ProviderLimit("openai", "openai/*", rpm=2, tpm=1000)
    # Then the first two requests fit, whoever makes them, and the third must wait about a window
    assert store.limits.acquire(limit, 100) == (0.0, "")
    assert other.limits.acquire(limit, 100) == (0.0, "")
    wait, which = store.limits.acquire(limit, 100)
    assert which == "rpm" and 0 < wait <= settings.provider_limit_window
    # And tokens count too: a call bigger than what is left waits for "tpm"
    tokens = ProviderLimit("openai", "tokens", tpm=1000)
    assert other.limits.acquire(tokens, 900) == (0.0, "")
    assert store.limits.acquire(tokens, 500)[1] == "tpm"
    assert store.limits.limited(limit) and not store.limits.limited(ProviderLimit("openai", "idle", rpm=5))
    # And a provider's retry-after seen by one worker holds every worker back; a shorter one does not shorten it
    blocked = ProviderLimit("anthropic", "anthropic/claude-x")
    other.limits.block(blocked.scope, 30)
    store.limits.block(blocked.scope, 1)
    wait, which = store.limits.acquire(blocked, 10)
    assert which == "retry-after" and 25 < wait <= 30 and store.limits.limited(blocked)


def test_the_registry_takes_rpm_and_tpm_per_entry_and_names_a_bad_one() -> None:
    from shared.models import ModelRegistry

    models = ModelRegistry(json.dumps({"openai/*": {"rpm": 60, "tpm": 200_000}, "openai/gpt-5.4": {"rpm": 10}}))
    glob, exact = models.resolve("openai/computer-use-preview"), models.resolve("openai/gpt-5.4")
    assert glob is not None and glob.limit() == ProviderLimit("openai", "openai/*", 60, 200_000)
    assert exact is not None and exact.limit() == ProviderLimit("openai", "openai/gpt-5.4", 10, None)
    builtin = ModelRegistry().resolve("anthropic/claude-haiku-4-5")
    assert builtin is not None and builtin.limit() == ProviderLimit("anthropic", "anthropic/claude-haiku-4-5")
    for bad in ({"rpm": 0}, {"tpm": "lots"}, {"rpm": True}):
        with pytest.raises(ValueError, match=r"LODESTAR_MODELS\['openai/\*'\]: (rpm|tpm) must be a positive integer"):
            ModelRegistry(json.dumps({"openai/*": bad}))


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "3"}, 3.0), ({"retry-after-ms": "250", "retry-after": "9"}, 0.25), ({}, None),
    ({"retry-after": "soon"}, None)])
def test_a_providers_retry_after_is_read_in_each_of_its_forms(headers: dict[str, str], seconds: float | None) -> None:
    from worker.providers.base import retry_after_seconds

    assert retry_after_seconds(headers) == seconds
