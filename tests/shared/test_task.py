"""The task record (``shared.task.Task``): its defaults and its conversions from a request, to and from Redis, to JSON;
and the store's key names as the Lua scripts spell them."""

from __future__ import annotations

import dataclasses

import pytest

from shared.settings import Settings
from shared.states import ExitCode, Status
from shared.store import TaskStore
from shared.task import (
    DEFAULT_MODEL,
    DEFAULT_TEMPERATURE,
    STORE_ONLY_FIELDS,
    Task,
    decode_field,
    encode_fields,
    screenshot_urls,
)
from tests.conftest import make_task


def _raw(task: Task) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in task.to_redis().items()}


def test_a_queued_task_stores_only_what_differs_from_the_defaults() -> None:
    task = Task(task_id="task_a", tenant="t1", instruction="do it", created_at=1.5)
    assert task.to_redis() == {"tenant": "t1", "instruction": "do it", "created_at": "1.5", "status": "queued"}
    assert Task.from_redis("task_a", _raw(task)) == task


def test_every_field_round_trips_through_redis() -> None:
    # Given a task with every field set away from its default
    values = {"kind": "desktop", "model": "openai/x", "agent_type": "scripted", "priority": "high", "max_steps": 7,
              "max_duration_seconds": 9, "temperature": 0.7, "screenshot_mode": "base64", "stream_mode": "concise",
              "viewport_width": 800, "viewport_height": 600, "persistent": True, "environment_id": "env_1",
              "start_url": "https://a.test/",
              "system_prompt": "be brief", "context": [{"role": "user", "content": "hi"}], "metadata": {"k": "v"},
              "idempotency_key": "k1", "webhook_url": "https://hook.test/", "webhook_events": "all",
              "allowed_domains": ["a.test", "*.b.test"], "batch_id": "batch_1", "sealed_secrets": {"pw": "gAAAA-t"},
              "status": Status.PAUSED,
              "exit_code": 3, "attempt": 2, "worker": "h:1",
              "started_at": 2.5, "finished_at": 3.5, "steps_taken": 4, "message": "m", "result": "r", "error": "e",
              "current_url": "https://b.test/", "usage": {"calls": 1, "total_tokens": 10}, "cost": 0.25,
              "messages_delivered": 1, "event_seq": 12, "max_cost_usd": 0.5, "replay_of": "task_a",
              "output_schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    task = Task(task_id="task_b", tenant="t1", instruction="x", created_at=1.0, **values)
    settable = {f.name for f in dataclasses.fields(Task)} - {"task_id", "tenant", "instruction", "created_at"}
    assert set(values) == settable  # the test covers every field
    # Then Redis holds each of them and gives the same task back, with types intact
    back = Task.from_redis("task_b", _raw(task))
    assert back == task
    assert isinstance(back.status, Status) and isinstance(back.cost, float) and back.persistent is True


@pytest.mark.parametrize("result", ["found it", "42", "", {"name": "ada", "n": 3}, [1, "two"], 7, 2.5, True])
def test_a_result_keeps_its_json_type_through_redis(result: object) -> None:
    # Given a task whose result is text (no output_schema) or a structured answer
    task = Task(task_id="task_r", tenant="t1", instruction="x", created_at=1.0, result=result)
    # Then it reads back with its type: a string stays a string even when it looks like JSON
    back = Task.from_redis("task_r", _raw(task)).result
    assert back == result and type(back) is type(result)


def test_a_result_stored_as_plain_text_before_results_were_json_still_reads() -> None:
    assert decode_field("result", "found it") == "found it"
    assert decode_field("result", '"found it"') == "found it"


def test_from_request_takes_the_validated_parameters_and_the_tenant_default_webhook() -> None:
    params = {"instruction": "go", "kind": "browser", "model": DEFAULT_MODEL, "max_steps": 5,
              "temperature": DEFAULT_TEMPERATURE, "save_session": True, "start_url": "https://x.test/",
              "computer_id": "ignored", "metadata": {"a": "1"}}
    task = Task.from_request(params, task_id="task_c", tenant="t9", created_at=4.0,
                             default_webhook_url="https://tenant.test/hook")
    assert (task.persistent, task.max_steps, task.start_url, task.webhook_url, task.metadata, task.status) == (
        True, 5, "https://x.test/", "https://tenant.test/hook", {"a": "1"}, Status.QUEUED)
    own = Task.from_request({**params, "webhook_url": "https://own.test/"}, task_id="t", tenant="t9",
                            created_at=4.0, default_webhook_url="https://tenant.test/hook")
    assert own.webhook_url == "https://own.test/"


def test_to_json_is_the_documented_shape() -> None:
    task = Task(task_id="task_d", tenant="t1", instruction="x", created_at=0.5, steps_taken=3, max_steps=4,
                status=Status.RUNNING, cost=0.1, attempt=1)
    body = task.to_json(screenshot_urls("http://api.test/"))
    assert body["last_screenshot_url"] == "http://api.test/agent/tasks/task_d/screenshots/3"
    assert (body["status"], body["progress"], body["cost"], body["attempt"]) == ("running", 0.75, 0.1, 1)
    assert body["created_at"] == "1970-01-01T00:00:00.500Z" and body["finished_at"] is None
    ended = dataclasses.replace(task, status=Status.COMPLETED, exit_code=0)
    assert ended.to_json(screenshot_urls(""))["progress"] == 1.0
    assert "tenant" not in body  # the tenant is never shown


def test_unknown_fields_are_refused_both_ways() -> None:
    with pytest.raises(KeyError):
        encode_fields({"no_such_field": 1})
    with pytest.raises(KeyError):
        encode_fields({"task_id": "x"})
    with pytest.raises(ValueError):
        decode_field("no_such_field", "1")
    assert {"first_status"} == STORE_ONLY_FIELDS


@pytest.mark.redis
def test_the_lua_scripts_and_keys_py_spell_the_tenant_keys_alike(store: TaskStore, settings: Settings) -> None:
    # Given a tenant limited to one running task, with one running
    store.tenants.set_limits("t_test", max_running=1)
    first, second = make_task(store), make_task(store)
    assert store.claim(first, "w1")[0] == "started"
    # When a second task is claimed, claim.lua defers it into the list keys.py names
    assert store.claim(second, "w2")[0] == "deferred"
    assert store.redis.lrange(store.keys.deferred("t_test"), 0, -1) == [second.encode()]
    # And the status moves (common.lua) use the index names keys.py builds
    assert store.redis.zscore(store.keys.index("t_test", "status", "running"), first) is not None
    assert store.redis.zscore(store.keys.index("t_test", "status", "queued"), second) is not None
    assert store.finish(first, ExitCode.COMPLETED).ok
    assert store.next_deferred("t_test") == [second]
