"""Issue 15 against the real stack (gunicorn API, a Celery worker with two browser slots, Redis database 10, real
Chromium) and the fake providers driven by the official SDKs: structured output (scripted and a model, read back by
the tzafon SDK), usage while a task is paused after a call, budgets per task, per batch and per tenant per day,
provider rate limits shared by the two slots (rpm, retry-after), and where a queued task stands and why."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from shared.settings import load_settings
from shared.store import TaskStore
from shared.store.budgets import utc_day
from shared.tenants import env_tenant
from tests.conftest import OTHER_KEY, LiveStack, Site, start_stack
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.chat import FakeChat
from tests.fakes.responses import FakeResponses, call_outputs, user_texts
from tests.fakes.server import Session

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]

KEYS = {"openai": "sk-caps", "anthropic": "ant-caps", "chat": "vllm-caps"}
PRICES = {"openai/*": [3.0, 12.0], "anthropic/*": [3.0, 15.0]}
CLAUDE, GPT, PREVIEW = "anthropic/claude-haiku-4-5", "openai/gpt-5.4", "openai/computer-use-preview"
LIMITED, BLOCKY, UNPRICED = "openai-compat/limited", "openai-compat/blocky", "openai-compat/ui-tars-1.5-7b"
WINDOW, RPM = 6, 2
"""LODESTAR_PROVIDER_LIMIT_WINDOW of this stack, and the rpm of LIMITED."""
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["name", "n"]}
CALL_USD = (1000 * 3 + 50 * 15) / 1e6
"""What one call of the Anthropic fake (1000 tokens in, 50 out) costs: $0.00375."""


@dataclass
class Caps:
    live: LiveStack
    store: TaskStore
    openai: FakeResponses
    anthropic: FakeAnthropic
    chat: FakeChat

    def submit(self, key: str | None = None, **body: Any) -> str:
        resp = self.live.http(key or self.live.key).post(f"{self.live.base_url}/agent/tasks", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["task_id"])

    def get(self, task_id: str, key: str | None = None) -> dict[str, Any]:
        resp = self.live.http(key or self.live.key).get(f"{self.live.base_url}/agent/tasks/{task_id}", timeout=30)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def events(self, task_id: str) -> list[dict[str, Any]]:
        resp = self.live.http().get(f"{self.live.base_url}/agent/tasks/{task_id}/events", stream=True, timeout=60)
        return [json.loads(line[6:]) for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]

    def cancel(self, *task_ids: str, key: str | None = None) -> None:
        resp = self.live.http(key or self.live.key).post(f"{self.live.base_url}/agent/tasks/cancel",
                                                         json={"task_ids": list(task_ids)}, timeout=30)
        assert resp.status_code == 200, resp.text


@pytest.fixture(scope="module")
def caps(redis_base: str, site: Site) -> Iterator[Caps]:
    openai, anthropic, chat = (FakeResponses(KEYS["openai"], "openai"), FakeAnthropic(KEYS["anthropic"]),
                               FakeChat(KEYS["chat"]))
    compat = {"base_url": chat.base_url, "api_key": KEYS["chat"], "dialect": "ui-tars"}
    models = {LIMITED: {**compat, "rpm": RPM}, BLOCKY: compat, UNPRICED: compat}
    url = f"{redis_base}/10"
    stack, live = start_stack(url, site, concurrency=2, extra_env={
        "OPENAI_BASE_URL": openai.base_url, "OPENAI_API_KEY": KEYS["openai"],
        "ANTHROPIC_BASE_URL": anthropic.url, "ANTHROPIC_API_KEY": KEYS["anthropic"],
        "LODESTAR_MODELS": json.dumps(models), "LODESTAR_MODEL_PRICES": json.dumps(PRICES),
        "LODESTAR_PROVIDER_LIMIT_WINDOW": str(WINDOW), "LODESTAR_MODEL_TIMEOUT": "20",
        "LODESTAR_MODEL_MAX_RETRIES": "1", "LODESTAR_KINDS": "browser,desktop"})
    store = TaskStore.from_settings(load_settings(redis_url=url, models=json.dumps(models)))
    yield Caps(live, store, openai, anthropic, chat)
    stack.stop()
    for fake in (openai, anthropic, chat):
        fake.close()


def no_errors(*sessions: Session) -> None:
    for session in sessions:
        assert session.errors == [], session.errors


def moves(fake: FakeAnthropic, turns: int) -> list[Any]:
    """Anthropic turns that each move the pointer (one model call each, 1000 tokens in and 50 out)."""
    return [lambda body, s: fake.message([fake.tool_use(s, "mouse_move", coordinate=[10, 10])], usage=(1000, 50))
            for _ in range(turns)]


def long_script(seconds: float = 120) -> dict[str, Any]:
    """A scripted task that keeps a slot busy for ``seconds`` in short steps (a cancel frees the slot at once)."""
    steps = int(seconds / 0.3)
    return {"agent_type": "scripted", "instruction": "\n".join(["wait 0.3"] * steps), "max_steps": steps + 1,
            "max_duration_seconds": int(seconds) + 60}


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- structured output ------------------------------------------------------------------------------------------
def test_a_scripted_structured_answer_is_json_for_the_api_and_the_tzafon_sdk(caps: Caps) -> None:
    from tzafon import Lightcone

    sdk = Lightcone(base_url=caps.live.base_url, api_key=caps.live.key, max_retries=0)
    # Given a task started through the SDK, output_schema and max_cost_usd in extra_body
    started = sdk.agent.tasks.start(instruction='done {"name": "ada", "n": 3}', agent_type="scripted",
                                    extra_body={"output_schema": SCHEMA, "max_cost_usd": 0.5})
    task = caps.live.wait_ended(started.task_id)
    # Then result is the parsed object in the JSON, the end event and the SDK's model (an extra field it keeps)
    assert (task["status"], task["exit_code"], task["result"]) == ("completed", 0, {"name": "ada", "n": 3})
    assert task["output_schema"] == SCHEMA and task["cost"] is None and task["usage"] is None  # offline: free
    status = sdk.agent.tasks.retrieve_status(started.task_id)
    assert status.result == {"name": "ada", "n": 3} and status.to_dict()["result"] == {"name": "ada", "n": 3}  # type: ignore[attr-defined]
    assert [e["result"] for e in caps.events(started.task_id) if e["type"] == "end"] == [{"name": "ada", "n": 3}]
    # And an answer that does not match fails at once (the script cannot answer again), naming the errors
    wrong = caps.live.wait_ended(caps.submit(agent_type="scripted", instruction='done {"name": "ada"}',
                                             output_schema=SCHEMA))
    assert (wrong["status"], wrong["exit_code"], wrong["result"]) == ("failed", 1, None)
    assert wrong["error"] == "the final answer does not match output_schema: $: 'n' is a required property"
    # And without a schema the result is still the text
    text = caps.live.wait_ended(caps.submit(agent_type="scripted", instruction='done {"name": "ada"}'))
    assert text["result"] == '{"name": "ada"}'


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"output_schema": {"type": "strnig"}}, "output_schema", "not a valid JSON Schema (draft 2020-12) at type"),
    ({"output_schema": "an object please"}, "output_schema", "Not a valid mapping type."),
    ({"output_schema": SCHEMA, "agent_type": "heuristic"}, "output_schema", "heuristic agent gives no structured"),
    ({"max_cost_usd": 0}, "max_cost_usd", "Must be greater than 0"),
    ({"max_cost_usd": 1, "model": UNPRICED}, "max_cost_usd", "has no price on this deployment"),
])
def test_bad_capability_parameters_are_a_422_naming_the_field(caps: Caps, body: dict[str, Any], field: str,
                                                               reason: str) -> None:
    resp = caps.live.http().post(f"{caps.live.base_url}/agent/tasks", json={"instruction": "x", **body}, timeout=30)
    assert resp.status_code == 422, resp.text
    fields = resp.json()["error"]["fields"]
    assert list(fields) == [field] and reason in str(fields[field]), fields


def test_a_models_answer_is_validated_and_the_model_is_asked_again(caps: Caps) -> None:
    fake = caps.openai

    def first(body: dict[str, Any], s: Session) -> Any:
        assert body["text"]["format"]["schema"] == SCHEMA
        return fake.response(s, [fake.message('{"name": "ada", "n": "three"}')])

    def second(body: dict[str, Any], s: Session) -> Any:
        assert "$.n: 'three' is not of type 'integer'" in user_texts(body)[0]
        return fake.response(s, [fake.message('{"name": "ada", "n": 3}')])

    session = fake.script("[caps-gpt]", [first, second])
    task = caps.live.wait_ended(caps.submit(instruction="[caps-gpt] who?", model=GPT, output_schema=SCHEMA))
    no_errors(session)
    assert (task["status"], task["result"], task["steps_taken"], task["usage"]["calls"]) == (
        "completed", {"name": "ada", "n": 3}, 2, 2)


# --- usage while paused -----------------------------------------------------------------------------------------
def test_usage_shows_what_a_task_spent_while_it_is_paused_after_a_call(caps: Caps) -> None:
    fake = caps.openai
    check = {"id": "sc_7", "code": "malicious_instructions", "message": "Really click?"}
    session = fake.script("[caps-paused]", [lambda body, s: fake.response(s, [fake.computer_call(
        s, {"type": "click", "button": "left", "x": 5, "y": 5}, checks=[check])])])
    task_id = caps.submit(instruction="[caps-paused] click", model=PREVIEW)
    paused = caps.live.wait_until(task_id, lambda t: t["status"] == "paused", timeout=60)
    # the call returned and the safety check paused the task before its step was recorded
    assert paused["steps_taken"] == 0
    assert paused["usage"] == {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120, "calls": 1}
    assert math.isclose(paused["cost"], (100 * 3 + 20 * 12) / 1e6)
    caps.cancel(task_id)
    no_errors(session)
    assert call_outputs(session.bodies[0]) == []


# --- budgets ----------------------------------------------------------------------------------------------------
def test_max_cost_usd_stops_a_task_before_the_call_that_would_exceed_it(caps: Caps) -> None:
    session = caps.anthropic.script("[caps-budget]", moves(caps.anthropic, 5))
    task = caps.live.wait_ended(caps.submit(instruction="[caps-budget] move", model=CLAUDE, max_cost_usd=0.01))
    no_errors(session)
    # two calls cost $0.0075; a third would cost about as much as the last: $0.01125 > $0.01, so it is not made
    assert (task["status"], task["exit_code"], len(session.requests)) == ("failed", 8, 2), task
    assert task["error"].startswith("max_cost_usd reached: the task spent $0.0075 of $0.01")
    assert math.isclose(task["cost"], 2 * CALL_USD) and task["usage"]["calls"] == 2


def test_a_batch_budget_is_shared_by_its_tasks_and_ends_them_with_exit_code_8(caps: Caps) -> None:
    sessions = [caps.anthropic.script(f"[caps-batch-{i}]", moves(caps.anthropic, 5)) for i in range(2)]
    resp = caps.live.http().post(f"{caps.live.base_url}/agent/tasks/batch", timeout=30, json={
        "max_cost_usd": 0.005, "tasks": [{"instruction": f"[caps-batch-{i}] move", "model": CLAUDE} for i in range(2)]})
    assert resp.status_code == 200 and resp.json()["max_cost_usd"] == 0.005, resp.text
    batch_id = resp.json()["batch_id"]
    tasks = [caps.live.wait_ended(row["task_id"]) for row in resp.json()["tasks"]]
    no_errors(*sessions)
    # one call each at most (run together, both fit; one after the other, the second does not), then exit code 8
    calls = sum(len(s.requests) for s in sessions)
    assert [(t["exit_code"], t["error"].split(":")[0]) for t in tasks] == [(8, "the batch's max_cost_usd reached")] * 2
    assert all(f"batch {batch_id} spent" in t["error"] for t in tasks) and 1 <= calls <= 2
    summary = caps.live.http().get(f"{caps.live.base_url}/agent/batches/{batch_id}", timeout=30).json()
    assert summary["max_cost_usd"] == 0.005 and math.isclose(summary["spent_usd"], calls * CALL_USD)
    bad = caps.live.http().post(f"{caps.live.base_url}/agent/tasks/batch", timeout=30, json={
        "max_cost_usd": "lots", "tasks": [{"instruction": "done", "agent_type": "scripted"}]})
    assert bad.status_code == 422 and list(bad.json()["error"]["fields"]) == ["max_cost_usd"]


# --- where is my task ---------------------------------------------------------------------------------------------
def test_queued_tasks_show_their_position_and_why_they_wait(caps: Caps) -> None:
    other = OTHER_KEY
    tenant_b = env_tenant(other)
    # Given tenant B limited to one running task, with two started: the second is deferred by a free slot's claim
    caps.store.tenants.set_limits(tenant_b, max_running=1)
    started = [caps.submit(other, **long_script()), caps.submit(other, **long_script())]
    ids: list[str] = list(started)
    try:
        _queued_tasks_show_their_position_and_why_they_wait(caps, started, ids)
    finally:  # the running ones stop within a step (0.3 s); the next tests need the slots and tenant B unlimited
        caps.cancel(*ids[2:])
        caps.cancel(*started, key=other)
        caps.store.tenants.set_limits(tenant_b, max_running=0)
        caps.store.redis.delete(caps.store.keys.blocked(BLOCKY))


def _queued_tasks_show_their_position_and_why_they_wait(caps: Caps, started: list[str], ids: list[str]) -> None:
    live, other = caps.live, OTHER_KEY
    # (either of B's two may be claimed first, by whichever slot is quicker: the other is the deferred one)
    deadline = time.monotonic() + 60
    rows = [caps.get(t, other) for t in started]
    while time.monotonic() < deadline and sorted(r["status"] for r in rows) != ["queued", "running"]:
        time.sleep(0.1)
        rows = [caps.get(t, other) for t in started]
    assert sorted(r["status"] for r in rows) == ["queued", "running"], rows
    b_deferred = started[1] if rows[0]["status"] == "running" else started[0]
    deferred = live.wait_until(b_deferred, lambda t: t["wait_reason"] is not None
                               and t["wait_reason"].startswith("tenant"), key=other)
    assert (deferred["queue_position"], deferred["wait_reason"]) == (None, "tenant max_running reached")
    # And tenant A's long task on the other slot: both slots are now busy
    a_running = caps.submit(**long_script())
    ids.append(a_running)
    live.wait_until(a_running, lambda t: t["status"] == "running")
    # When tasks queue up: low, two normal, high; a desktop task (no desktop worker); a model whose provider said
    # to wait (retry-after)
    low, first, second = (caps.submit(**long_script(), priority=p) for p in ("low", "normal", "normal"))
    high = caps.submit(**long_script(), priority="high")
    desktop = caps.submit(agent_type="scripted", instruction="done", kind="desktop")
    caps.store.limits.block(BLOCKY, 120)
    blocked = caps.submit(instruction="[caps-never] go", model=BLOCKY)
    ids.extend([low, first, second, high, desktop, blocked])
    # Then each shows where it stands (the blocked one is counted in the browser queue too)
    rows = {t: caps.get(t) for t in (high, first, second, blocked, low, desktop)}
    assert [(rows[t]["queue_position"], rows[t]["wait_reason"]) for t in (high, first, second, blocked, low)] == [
        (1, "queued behind 0 tasks"), (2, "queued behind 1 tasks"), (3, "queued behind 2 tasks"),
        (4, "rate limited"), (5, "queued behind 4 tasks")]
    assert (rows[desktop]["queue_position"], rows[desktop]["wait_reason"]) == (1, "no worker for kind desktop")
    # And the list filters by the reason (newest first) and shows both fields
    listed = live.http().get(f"{live.base_url}/agent/tasks", params={"wait_reason": "queued behind"}, timeout=30)
    assert [t["task_id"] for t in listed.json()["data"]] == [high, second, first, low]
    assert [t["queue_position"] for t in listed.json()["data"]] == [1, 3, 2, 5]
    listed = live.http().get(f"{live.base_url}/agent/tasks", params={"wait_reason": "no worker"}, timeout=30)
    assert [t["task_id"] for t in listed.json()["data"]] == [desktop]
    # a status list narrows with the reason: with queued in it, the queued ones; without, none (never a 422)
    listed = live.http().get(f"{live.base_url}/agent/tasks", params={"wait_reason": "no worker",
                                                                    "status": "queued,running"}, timeout=30)
    assert [t["task_id"] for t in listed.json()["data"]] == [desktop]
    listed = live.http().get(f"{live.base_url}/agent/tasks", params={"wait_reason": "no worker",
                                                                    "status": "running"}, timeout=30)
    assert listed.status_code == 200 and listed.json()["data"] == []
    listed = live.http(other).get(f"{live.base_url}/agent/tasks",
                                  params={"wait_reason": "tenant max_running reached"}, timeout=30)
    assert [t["task_id"] for t in listed.json()["data"]] == [b_deferred]
    bad = live.http().get(f"{live.base_url}/agent/tasks", params={"wait_reason": "bored"}, timeout=30)
    assert bad.status_code == 422 and list(bad.json()["error"]["fields"]) == ["wait_reason"]


# --- provider rate limits ------------------------------------------------------------------------------------------
def hotkeys(fake: FakeChat, presses: int) -> list[Any]:
    """UI-TARS turns: ``presses`` harmless key presses, then finished."""
    turns: list[Any] = [lambda body, s: fake.completion("Thought: wait.\nAction: hotkey(key='shift')")
                        for _ in range(presses)]
    return [*turns, lambda body, s: fake.completion("Thought: done.\nAction: finished(content='ok')")]


def test_rpm_is_shared_by_the_workers_and_a_waiting_task_says_why(caps: Caps) -> None:
    # Given two tasks of a model limited to 2 requests per window, 3 calls each, on two slots at once
    sessions = [caps.chat.script(f"[caps-rpm-{i}]", hotkeys(caps.chat, 2)) for i in range(2)]
    ids = [caps.submit(instruction=f"[caps-rpm-{i}] press", model=LIMITED) for i in range(2)]
    # When they run, watching what they say
    messages: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(caps.get(t)["exit_code"] is not None for t in ids):
        messages |= {caps.get(t)["message"] or "" for t in ids}
        time.sleep(0.2)
    tasks = [caps.live.wait_ended(t) for t in ids]
    no_errors(*sessions)
    assert [t["status"] for t in tasks] == ["completed"] * 2, tasks
    # Then the fake never saw more than 2 requests within a window (less a second and a half for the way there),
    # 6 requests took at least two windows after the first, and a task waiting for the limit said so
    arrivals = sorted(r.at for s in sessions for r in s.requests)
    assert len(arrivals) == 6 and caps.chat.busiest(WINDOW - 1.5, sessions) <= RPM, caps.chat.per_second()
    assert arrivals[4] - arrivals[0] >= 2 * WINDOW - 1.5, arrivals
    assert f"waiting for the openai-compat rate limit (rpm {RPM})" in messages, messages


def test_a_providers_retry_after_holds_back_every_worker_calling_it(caps: Caps) -> None:
    retry_after = 20  # room for the second task to be claimed while it holds, on a loaded machine
    fake = caps.chat
    # Given a task whose first call gets a 429 asking to wait 20 s (the SDK retries it after that)
    first = fake.script("[caps-429-a]", [fake.error(429, "slow down", retry_after=str(retry_after)),
                                         *hotkeys(fake, 0)])
    a = caps.submit(instruction="[caps-429-a] go", model=BLOCKY)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and caps.store.limits.blocked_for(BLOCKY) <= 0:
        time.sleep(0.05)
    assert first.requests and caps.store.limits.blocked_for(BLOCKY) > 0, "the worker never shared the retry-after"
    # When another task of the same model starts on the other slot meanwhile
    second = fake.script("[caps-429-b]", hotkeys(fake, 0))
    b = caps.submit(instruction="[caps-429-b] go", model=BLOCKY)
    waiting = caps.live.wait_until(b, lambda t: t["status"] != "queued" or t["exit_code"] is not None)
    tasks = [caps.live.wait_ended(t) for t in (a, b)]
    no_errors(first, second)
    assert [t["status"] for t in tasks] == ["completed"] * 2, tasks
    # Then it started while the provider's wait held, and made its call only once the wait was over
    held_until = first.requests[0].wall + retry_after
    assert epoch(tasks[1]["started_at"]) < held_until, (waiting, tasks[1]["started_at"])
    assert second.requests[0].wall >= held_until - 0.05
    assert first.requests[1].wall >= held_until - 0.05  # the SDK's own retry honoured it too


# --- the tenant's daily budget (last: it leaves tenant B's spending) ------------------------------------------------
def test_a_spent_daily_budget_stops_running_tasks_and_refuses_submits_until_midnight_utc(caps: Caps) -> None:
    live, other, tenant_b = caps.live, OTHER_KEY, env_tenant(OTHER_KEY)
    caps.store.tenants.set_limits(tenant_b, daily_budget_usd=CALL_USD)
    tenant = f"{live.base_url}/agent/tenant"
    deadline = time.monotonic() + 30
    while live.http(other).get(tenant, timeout=30).json()["daily_budget_usd"] != CALL_USD:  # tenants: cached 5 s
        assert time.monotonic() < deadline
        time.sleep(0.2)
    session = caps.anthropic.script("[caps-daily]", moves(caps.anthropic, 5))
    task = live.wait_ended(caps.submit(other, instruction="[caps-daily] move", model=CLAUDE, viewport_width=800,
                                       viewport_height=600), key=other)  # a first call estimated below $0.00375
    no_errors(session)
    # one call fits in the day's budget, a second would not; then the budget is spent
    assert (task["exit_code"], len(session.requests)) == (8, 1), task
    assert task["error"].startswith("the tenant's daily budget reached: $0.00375 of $0.00375 spent today (UTC)")
    assert math.isclose(live.http(other).get(tenant, timeout=30).json()["spent_today_usd"], CALL_USD)
    refused = live.http(other).post(f"{live.base_url}/agent/tasks", timeout=30,
                                    json={"instruction": "done", "agent_type": "scripted"})
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "daily_budget_spent", refused.text
    assert "daily budget of $0.00375 is spent" in refused.json()["error"]["message"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    assert live.http().post(f"{live.base_url}/agent/tasks", timeout=30,  # other tenants are not held back
                            json={"instruction": "done", "agent_type": "scripted"}).status_code == 200
    caps.store.tenants.set_limits(tenant_b, daily_budget_usd=0)
    caps.store.redis.delete(caps.store.keys.spent(tenant_b, utc_day()))
