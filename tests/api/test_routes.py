"""The HTTP API through Flask's test client on a real Redis (no worker: enqueued Celery messages stay in Redis)."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from tzafon.types.agent.task_start_params import TaskStartParams
from werkzeug.test import TestResponse

from api import create_app
from shared.settings import Settings
from shared.states import ExitCode, Status
from shared.store import TaskStore
from tests.conftest import KEY, OTHER_KEY, app_state

pytestmark = pytest.mark.redis

AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


def api_settings(settings: Settings, **overrides: Any) -> Settings:
    """``settings`` for the API under test: a short SSE keepalive (a stream that fails to close shows up as
    keepalive comments, not a hang), and workers for both kinds where the deployment can say so."""
    if "kinds" in {f.name for f in dataclasses.fields(Settings)}:
        overrides.setdefault("kinds", ("browser", "desktop"))
    return dataclasses.replace(settings, sse_keepalive=0.2, **overrides)


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(test_config=api_settings(settings))


def test_create_app_builds_independent_apps(settings: Settings) -> None:
    # Given two apps in one process with different settings (tests, embedding)
    first = create_app(test_config=api_settings(settings))
    second = create_app(test_config=api_settings(settings, default_kind="desktop"))
    # Then both serve the routes, each with its own settings
    assert first is not second and app_state(first).settings != app_state(second).settings
    for app in (first, second):
        assert app.test_client().get("/agent/tasks/task_x", headers=AUTH).status_code == 404
        assert any(rule.rule == "/agent/tasks/<task_id>/ws" for rule in app.url_map.iter_rules())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> TaskStore:
    return app_state(app).store


def start(client: FlaskClient, **body: Any) -> str:
    """POST a valid scripted task (``body`` overrides); returns its id."""
    resp = client.post("/agent/tasks", json={"instruction": 'done "ok"', "agent_type": "scripted", **body},
                       headers=AUTH)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.json is not None and resp.json["status"] == "queued"
    return str(resp.json["task_id"])


def assert_nothing_created(store: TaskStore) -> None:
    """No task record, event log or index was written, and no Celery message was queued."""
    written = [k for k in store.redis.keys("*") if b":ratelimit" not in k]
    assert written == [], written


def error_of(resp: TestResponse, status: int) -> dict[str, Any]:
    """Assert ``resp`` is a JSON error with ``status``; return its ``error`` object."""
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True))
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    return typing.cast(dict[str, Any], error)


def sse_frames(resp: TestResponse, max_keepalives: int = 5) -> list[tuple[int, dict[str, Any]]]:
    """Read an SSE response to its end as ``(id, data)``; fail if it keeps the connection open (keepalives only)."""
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "text/event-stream"
    text, keepalives = "", 0
    try:
        for chunk in resp.response:
            piece = chunk.decode() if isinstance(chunk, bytes) else chunk
            if piece.startswith(": keepalive"):
                keepalives += 1
                assert keepalives <= max_keepalives, "the stream did not close after the end event"
            text += piece
    finally:
        resp.close()
    frames = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("id: ") and lines[1].startswith("data: "), block
        frames.append((int(lines[0][4:]), json.loads(lines[1][6:])))
    return frames


# --- authentication -----------------------------------------------------------------------------------------------
PROTECTED = [("post", "/agent/tasks"), ("post", "/agent/tasks/stream"), ("get", "/agent/tasks/task_x"),
             ("post", "/agent/tasks/task_x/pause"), ("post", "/agent/tasks/task_x/resume"),
             ("post", "/agent/tasks/task_x/cancel"), ("post", "/agent/tasks/task_x/messages"),
             ("get", "/agent/tasks/task_x/events"), ("get", "/agent/tasks/task_x/screenshots/1")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer "}, {"Authorization": KEY}],
                         ids=["none", "wrong-key", "basic", "empty", "no-scheme"])
def test_every_task_route_needs_a_valid_bearer_key(client: FlaskClient, store: TaskStore, method: str, path: str,
                                                   headers: dict[str, str]) -> None:
    resp = getattr(client, method)(path, headers=headers, json={"instruction": "done", "agent_type": "scripted"})
    error = error_of(resp, 401)
    assert error["type"] == "unauthorized"
    assert_nothing_created(store)


def test_no_configured_keys_means_no_access(settings: Settings) -> None:
    closed = create_app(test_config=api_settings(settings, api_keys=())).test_client()
    for headers in ({}, AUTH, {"Authorization": "Bearer x"}):
        assert error_of(closed.get("/agent/tasks/task_x", headers=headers), 401)["type"] == "unauthorized"


def test_a_valid_key_is_accepted_with_a_lowercase_scheme(client: FlaskClient) -> None:
    error = error_of(client.get("/agent/tasks/task_x", headers={"Authorization": f"bearer {KEY}"}), 404)
    assert error["type"] == "not_found"


# --- start: body and validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"not json", b"{'single': 'quotes'}", b"", b"\xff\xfe", b"null",
                                 b'[{"instruction": "done", "agent_type": "scripted"}]', b'"done"', b"42"],
                         ids=["text", "python-dict", "empty", "binary", "null", "array", "string", "number"])
@pytest.mark.parametrize("path", ["/agent/tasks", "/agent/tasks/stream"])
def test_start_needs_a_json_object(client: FlaskClient, store: TaskStore, raw: bytes, path: str) -> None:
    resp = client.post(path, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    error = error_of(resp, 400)
    assert error["type"] == "invalid_json" and "JSON" in error["message"]
    assert_nothing_created(store)


VALID = {"instruction": 'done "ok"', "agent_type": "scripted"}
BAD_FIELDS = [
    ({"kind": "mainframe"}, "kind"),
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": -1}, "max_steps"),
    ({"max_steps": 10**6}, "max_steps"),
    ({"max_steps": "5"}, "max_steps"),
    ({"max_steps": 2.5}, "max_steps"),
    ({"max_steps": True}, "max_steps"),
    ({"max_duration_seconds": 0}, "max_duration_seconds"),
    ({"max_duration_seconds": 10**9}, "max_duration_seconds"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"viewport_width": 10}, "viewport_width"),
    ({"viewport_width": 100000}, "viewport_width"),
    ({"viewport_width": 1280.5}, "viewport_width"),
    ({"viewport_height": 0}, "viewport_height"),
    ({"instruction": None}, "instruction"),
    ({"instruction": ""}, "instruction"),
    ({"instruction": 42}, "instruction"),
    ({"screenshot_mode": "png"}, "screenshot_mode"),
    ({"priority": "urgent"}, "priority"),
    ({"priority": 0}, "priority"),
    ({"start_url": "ftp://x"}, "start_url"),
    ({"start_url": "not a url"}, "start_url"),
    ({"start_url": "javascript:alert(1)"}, "start_url"),
    ({"context": [{"role": "system", "content": "obey"}]}, "context"),
    ({"context": [{"role": "user"}]}, "context"),
    ({"context": "hi"}, "context"),
    ({"metadata": {"customer": 42}}, "metadata"),
    ({"metadata": {"k": None}}, "metadata"),
    ({"metadata": ["a"]}, "metadata"),
    ({"stream_mode": "loud"}, "stream_mode"),
    ({"harness_version": "v3"}, "harness_version"),
    ({"on_missing_computer": "panic"}, "on_missing_computer"),
    ({"agent_type": "gpt-7"}, "agent_type"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"persistent": "maybe"}, "persistent"),
]


@pytest.mark.parametrize(("override", "field"), BAD_FIELDS, ids=[f"{f}={o[f]!r}"[:40] for o, f in BAD_FIELDS])
def test_start_rejects_an_invalid_field_with_422_naming_it(client: FlaskClient, store: TaskStore,
                                                           override: dict[str, Any], field: str) -> None:
    resp = client.post("/agent/tasks", json={**VALID, **override}, headers=AUTH)
    error = error_of(resp, 422)
    assert error["type"] == "invalid_request"
    assert list(error["fields"]) == [field], error
    assert field in error["message"]
    assert_nothing_created(store)


def test_start_rejects_a_missing_instruction(client: FlaskClient) -> None:
    error = error_of(client.post("/agent/tasks", json={"agent_type": "scripted"}, headers=AUTH), 422)
    assert error["fields"] == {"instruction": ["Missing data for required field."]}


def test_start_rejects_an_instruction_over_the_limit(client: FlaskClient, settings: Settings) -> None:
    at_limit = "wait 0\n" * (settings.max_instruction_chars // 7) + "done"
    at_limit = at_limit[-settings.max_instruction_chars:]
    assert len(at_limit) == settings.max_instruction_chars
    assert client.post("/agent/tasks", json={**VALID, "instruction": at_limit}, headers=AUTH).status_code == 200
    error = error_of(client.post("/agent/tasks", json={**VALID, "instruction": "x" * (len(at_limit) + 1)},
                                 headers=AUTH), 422)
    assert list(error["fields"]) == ["instruction"]


def test_start_names_the_bad_role_inside_context(client: FlaskClient) -> None:
    body = {**VALID, "context": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    error = error_of(client.post("/agent/tasks", json=body, headers=AUTH), 422)
    assert list(error["fields"]["context"]) == ["1"] and "role" in error["fields"]["context"]["1"]


def test_start_names_the_bad_metadata_value(client: FlaskClient) -> None:
    error = error_of(client.post("/agent/tasks", json={**VALID, "metadata": {"ok": "x", "n": 1}}, headers=AUTH), 422)
    assert set(error["fields"]["metadata"]) == {"n"}


def test_start_with_an_unknown_model_is_a_422_naming_the_model(client: FlaskClient, store: TaskStore) -> None:
    resp = client.post("/agent/tasks", json={"instruction": "book a flight", "model": "acme/robot-9000"},
                       headers=AUTH)
    error = error_of(resp, 422)
    assert list(error["fields"]) == ["model"]
    assert "acme/robot-9000" in error["message"]
    assert_nothing_created(store)


def test_start_without_agent_type_runs_the_default_model(client: FlaskClient, store: TaskStore) -> None:
    resp = client.post("/agent/tasks", json={"instruction": "book a flight"}, headers=AUTH)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    record = store.get(resp.get_json()["task_id"])
    assert record is not None and record.model == "tzafon.northstar-cua-fast" and record.agent_type is None


@pytest.mark.parametrize("raw", [b'{"instruction": "done", "agent_type": "scripted", "temperature": NaN}',
                                 b'{"instruction": "done", "agent_type": "scripted", "temperature": Infinity}',
                                 b'{"instruction": "done", "agent_type": "scripted", "temperature": 1e400}',
                                 b'{"instruction": "done", "agent_type": "scripted", "max_steps": 1e400}'])
def test_start_rejects_non_finite_numbers(client: FlaskClient, raw: bytes) -> None:
    resp = client.post("/agent/tasks", data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code in (400, 422), resp.get_data(as_text=True)
    error_of(resp, resp.status_code)


def test_no_value_of_any_wrong_type_causes_a_server_error(client: FlaskClient) -> None:
    # Given every start field set in turn to values of every JSON type, some absurd
    names = [*typing.get_type_hints(TaskStartParams), "priority", "unknown_field"]
    odd_values: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x" * 5000, [], [1, "a"], {}, {"a": {"b": []}}]
    for name in names:
        for value in odd_values:
            # When it is posted
            resp = client.post("/agent/tasks", json={**VALID, name: value}, headers=AUTH)
            # Then the answer is a success or a 422 naming that field (a 404 for an environment_id that names no
            # environment), never a 500
            refused = (404, 422) if name == "environment_id" else (422,)
            assert resp.status_code in (200, *refused), (name, value, resp.status_code, resp.get_data(as_text=True))
            if resp.status_code in refused:
                assert name in error_of(resp, resp.status_code)["fields"], (name, value)


# --- start: accepted parameters and defaults ----------------------------------------------------------------------
SDK_VALUES: dict[str, Any] = {
    "instruction": 'goto https://example.com/\ndone "ok"',
    "agent_icon": "https://example.com/icon.png",
    "agent_type": "scripted",
    "computer_id": "computer_123",
    "context": [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "noted"}],
    "environment_id": "env_123",
    "harness_version": "v2",
    "idempotency_key": "",  # made unique per run below
    "keep_alive": False,
    "kind": "browser",
    "max_duration_seconds": 600,
    "max_steps": 12,
    "metadata": {"customer": "acme", "ticket": "T-1"},
    "model": "tzafon.northstar-cua-fast",
    "on_missing_computer": "create_new",
    "persistent": False,
    "save_session": True,
    "screenshot_mode": "base64",
    "start_url": "https://example.com/start",
    "stream_deltas": True,
    "stream_mode": "concise",
    "system_prompt": "Be brief.",
    "temperature": 0.7,
    "terminate_on_completion": True,
    "thread_id": "thread_123",
    "viewport_height": 600,
    "viewport_width": 800,
}
"""A valid value for every parameter the tzafon SDK can send (a new SDK field makes the test below fail)."""


def sdk_params() -> list[str]:
    return list(TaskStartParams.__annotations__)


def test_every_parameter_the_sdk_can_send_is_accepted(client: FlaskClient, store: TaskStore) -> None:
    # Given a body with a valid value for EVERY start parameter the official SDK knows
    missing = [name for name in sdk_params() if name not in SDK_VALUES]
    assert not missing, f"new tzafon start parameters to handle (and add here): {missing}"
    body = {name: SDK_VALUES[name] for name in sdk_params()}
    body["idempotency_key"] = f"order-{uuid.uuid4().hex}"
    body["agent_type"] = "scripted"
    # (environment_id names a saved environment of the tenant: one an earlier persistent task made)
    earlier = store.get(start(client, persistent=True))
    assert earlier is not None and earlier.environment_id
    client.post(f"/agent/tasks/{earlier.task_id}/cancel", headers=AUTH)  # it holds the environment until it ends
    body["environment_id"] = earlier.environment_id
    # When it is posted
    resp = client.post("/agent/tasks", json=body, headers=AUTH)
    # Then the task is queued, with the parameters that have a meaning stored
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.json == {"task_id": resp.json["task_id"], "status": "queued",  # type: ignore[index]
                         "idempotency_key": body["idempotency_key"], "reused": False}
    record = store.get(resp.json["task_id"])  # type: ignore[index]
    assert record is not None
    assert {k: getattr(record, k) for k in (
        "kind", "model", "agent_type", "max_steps", "max_duration_seconds", "temperature", "screenshot_mode",
        "stream_mode", "viewport_width", "viewport_height", "metadata", "idempotency_key", "instruction")} == {
        k: body[k] for k in ("kind", "model", "agent_type", "max_steps", "max_duration_seconds", "temperature",
                             "screenshot_mode", "stream_mode", "viewport_width", "viewport_height", "metadata",
                             "idempotency_key", "instruction")}
    assert (record.start_url, record.system_prompt, record.context) == (
        body["start_url"], body["system_prompt"], body["context"])


LITERALS = [(name, value) for name, hint in typing.get_type_hints(TaskStartParams).items()
            if typing.get_origin(hint) is typing.Literal for value in typing.get_args(hint)]


@pytest.mark.parametrize(("name", "value"), LITERALS, ids=[f"{n}={v}" for n, v in LITERALS])
def test_every_literal_value_the_sdk_allows_is_accepted(client: FlaskClient, store: TaskStore, name: str,
                                                        value: str) -> None:
    task_id = start(client, **{name: value})
    record = store.get(task_id)
    assert record is not None
    if hasattr(record, name):
        assert getattr(record, name) == value


def test_documented_defaults_are_applied(app: Flask, client: FlaskClient, store: TaskStore,
                                         settings: Settings) -> None:
    # Given a deployment whose default kind is desktop, a start with a start_url and nothing else optional
    desktop_first = api_settings(settings, default_kind="desktop")
    client = create_app(test_config=desktop_first).test_client()
    with_url = start(client, start_url="https://example.com/")
    without_url = start(client)
    # When the tasks are read back
    task = client.get(f"/agent/tasks/{with_url}", headers=AUTH).get_json()
    # Then the documented defaults are in the public view...
    assert task["task_id"] == with_url and task["status"] == "queued" and task["exit_code"] is None
    assert task["model"] == "tzafon.northstar-cua-fast" and task["max_steps"] == 100
    assert task["kind"] == "browser"  # a start_url implies a browser
    assert task["priority"] == "normal" and task["agent_type"] == "scripted"
    assert task["steps_taken"] == 0 and task["progress"] == 0.0 and task["metadata"] == {}
    assert task["started_at"] is None and task["finished_at"] is None and task["result"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", task["created_at"]), task["created_at"]
    assert client.get(f"/agent/tasks/{without_url}", headers=AUTH).get_json()["kind"] == "desktop"
    # ...and in the stored record
    record = store.get(with_url)
    assert record is not None
    assert record.temperature == 0.2
    assert (record.viewport_width, record.viewport_height) == (1280, 720)
    assert record.screenshot_mode == "url" and record.stream_mode == "verbose"
    assert record.max_duration_seconds == settings.default_max_duration == 1800
    assert (record.start_url, record.system_prompt, record.context) == ("https://example.com/", None, [])


def test_kind_without_start_url_defaults_to_the_setting(client: FlaskClient) -> None:
    task_id = start(client)
    assert client.get(f"/agent/tasks/{task_id}", headers=AUTH).get_json()["kind"] == "browser"


def test_unknown_fields_are_ignored(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client, x_unknown_option="https://example.com/hook", foo_bar_baz={"bar": 1})
    record = store.get(task_id)
    assert record is not None
    raw = str(store.redis.hgetall(store.keys.task(task_id)))
    assert "x_unknown_option" not in raw and "foo_bar_baz" not in raw


# --- priority on the Redis queue ----------------------------------------------------------------------------------
def queued_messages(store: TaskStore) -> dict[str, list[str]]:
    """Celery task ids waiting in each kombu list on the broker database, by list key."""
    out: dict[str, list[str]] = {}
    for key in store.redis.keys("*"):
        if store.redis.type(key) == b"list" and not key.startswith(b"lodestar:"):
            out[key.decode()] = [json.loads(m)["headers"]["id"] for m in store.redis.lrange(key, 0, -1)]
    return out


def test_priority_maps_to_the_redis_sub_queue(client: FlaskClient, store: TaskStore) -> None:
    # Given tasks started at each priority, and one with no priority
    high = start(client, priority="high")
    low = start(client, priority="low")
    normal = start(client, priority="normal")
    default = start(client)
    desktop_high = start(client, priority="high", kind="desktop")
    # Then each Celery message sits in the kombu list for its priority (0 is served first on Redis)
    queued = queued_messages(store)
    assert queued == {"browser": [high], "browser:9": [low], "browser:4": [default, normal],
                      "desktop": [desktop_high]}, queued
    # and the message itself carries the priority and runs lodestar.run_task on the task id
    message = json.loads(store.redis.lrange("browser:9", 0, -1)[0])
    assert message["properties"]["priority"] == 9
    assert message["headers"]["task"] == "lodestar.run_task" and message["headers"]["id"] == low
    assert store.get(low).priority == "low"  # type: ignore[index]


def test_idempotency_key_reuses_the_task_per_tenant(client: FlaskClient, store: TaskStore) -> None:
    body = {**VALID, "idempotency_key": "order-1"}
    first = client.post("/agent/tasks", json=body, headers=AUTH).get_json()
    again = client.post("/agent/tasks", json=body, headers=AUTH).get_json()
    other = client.post("/agent/tasks", json=body, headers=OTHER).get_json()
    assert (first["reused"], again["reused"], other["reused"]) == (False, True, False)
    assert again["task_id"] == first["task_id"] != other["task_id"]
    assert sum(len(v) for v in queued_messages(store).values()) == 2  # the reuse queued nothing


# --- health and the OpenAPI document ------------------------------------------------------------------------------
def test_healthz_answers_without_a_key_when_redis_is_up(client: FlaskClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok", "redis": "ok"}


def test_healthz_is_503_when_redis_is_down(settings: Settings) -> None:
    from lodestar.stack import free_port

    down = create_app(test_config=api_settings(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    resp = down.test_client().get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["status"] == "unavailable"


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _check_refs(spec: dict[str, Any], node: Any) -> None:
    if isinstance(node, dict):
        if "$ref" in node:
            _resolve(spec, node["$ref"])
        for value in node.values():
            _check_refs(spec, value)
    elif isinstance(node, list):
        for value in node:
            _check_refs(spec, value)


def check_openapi3(spec: dict[str, Any]) -> None:
    """The structural rules of OpenAPI 3.1 that a client generator relies on."""
    assert re.fullmatch(r"3\.1\.\d+", spec["openapi"]), spec["openapi"]
    assert spec["info"]["title"] and spec["info"]["version"]
    assert set(spec) <= {"openapi", "info", "servers", "paths", "components", "security", "tags", "externalDocs",
                         "webhooks", "jsonSchemaDialect"}
    _check_refs(spec, spec)
    operation_ids = []
    for path, item in spec["paths"].items():
        assert path.startswith("/")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            assert method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}, (path, method)
            operation_ids.append(op["operationId"])
            assert op["responses"], (path, method)
            for code, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d|default", code) and response["description"], (path, code)
                for link in response.get("links", {}).values():
                    assert link["operationId"] in {o["operationId"] for i in spec["paths"].values()
                                                   for o in i.values()}, link
            params = [_resolve(spec, p["$ref"]) if "$ref" in p else p for p in op.get("parameters", [])]
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == templated, (path, method, in_path)
            assert all(p["required"] is True for p in params if p["in"] == "path")
            assert all(p["in"] in {"path", "query", "header", "cookie"} for p in params)
            for name in op.get("security", []):
                assert set(name) <= set(spec["components"]["securitySchemes"])
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for scheme in spec.get("security", []):
        assert set(scheme) <= set(spec["components"]["securitySchemes"])


def test_openapi_document_is_valid_and_covers_every_route(app: Flask, client: FlaskClient) -> None:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    spec = resp.get_json()
    check_openapi3(spec)
    # every route of the app (but Flask's /static) is documented, with its methods
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/static"):
            continue
        # <task_id> -> {id} (so <batch_id> -> {id} too), <int:step> -> {step}
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{id}" if m[1].endswith("_id") else f"{{{m[1]}}}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    assert set(routes) == set(spec["paths"]), set(routes) ^ set(spec["paths"])
    for path, methods in routes.items():
        assert methods == set(spec["paths"][path]), (path, methods)


def test_openapi_task_start_schema_lists_every_sdk_parameter(client: FlaskClient) -> None:
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["TaskStart"]
    missing = set(sdk_params()) - set(schema["properties"])
    assert not missing, missing
    assert "instruction" in schema["required"]
    assert schema["properties"]["priority"]["enum"] == ["high", "normal", "low"]
    assert schema["properties"]["kind"]["enum"] == ["browser", "desktop"]


# --- reading tasks ------------------------------------------------------------------------------------------------
def test_unknown_task_is_a_json_404(client: FlaskClient) -> None:
    for method, path in [("get", "/agent/tasks/task_nope"), ("post", "/agent/tasks/task_nope/pause"),
                         ("post", "/agent/tasks/task_nope/resume"), ("post", "/agent/tasks/task_nope/cancel"),
                         ("get", "/agent/tasks/task_nope/events"), ("get", "/agent/tasks/task_nope/screenshots/1")]:
        assert error_of(getattr(client, method)(path, headers=AUTH), 404)["type"] == "not_found", path
    resp = client.post("/agent/tasks/task_nope/messages", json={"message": "hi"}, headers=AUTH)
    assert error_of(resp, 404)["type"] == "not_found"


def test_another_tenants_task_is_a_404(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    assert error_of(client.get(f"/agent/tasks/{task_id}", headers=OTHER), 404)["type"] == "not_found"
    error_of(client.post(f"/agent/tasks/{task_id}/cancel", headers=OTHER), 404)
    assert store.get(task_id).status == "queued"  # type: ignore[index]


def test_unknown_route_and_method_are_json_errors(client: FlaskClient) -> None:
    assert error_of(client.get("/nope", headers=AUTH), 404)["type"] == "not_found"
    assert error_of(client.put("/agent/tasks/task_x", headers=AUTH), 405)["type"] == "method_not_allowed"


def test_missing_screenshot_is_a_404(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    error_of(client.get(f"/agent/tasks/{task_id}/screenshots/1", headers=AUTH), 404)
    store.put_screenshot(task_id, 1, b"\xff\xd8jpeg")
    resp = client.get(f"/agent/tasks/{task_id}/screenshots/1", headers=AUTH)
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg" and resp.data == b"\xff\xd8jpeg"


# --- control ------------------------------------------------------------------------------------------------------
def run_and_finish(store: TaskStore, task_id: str, code: ExitCode = ExitCode.COMPLETED) -> None:
    assert store.claim(task_id, "worker-1")[0] == "started"
    assert store.finish(task_id, code, result="done").ok


def test_pause_of_a_completed_task_is_a_final_409(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    run_and_finish(store, task_id)
    for verb in ("pause", "resume", "cancel"):
        resp = client.post(f"/agent/tasks/{task_id}/{verb}", headers=AUTH)
        error = error_of(resp, 409)
        assert error["type"] == "conflict" and error["message"] == f"cannot {verb} a task that is completed"
        assert resp.headers["x-should-retry"] == "false" and "retry-after" not in resp.headers
    resp = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "too late"}, headers=AUTH)
    assert error_of(resp, 409)["type"] == "conflict" and resp.headers["x-should-retry"] == "false"
    assert store.get(task_id).status == "completed"  # type: ignore[index]


def test_pause_of_a_queued_task_is_a_409_worth_retrying(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    resp = client.post(f"/agent/tasks/{task_id}/pause", headers=AUTH)
    assert error_of(resp, 409)["message"] == "cannot pause a task that is queued"
    assert resp.headers["x-should-retry"] == "true" and int(resp.headers["retry-after"]) >= 1
    assert store.get(task_id).status == "queued"  # type: ignore[index]


def test_pause_and_resume_of_a_running_task(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    assert store.claim(task_id, "worker-1")[0] == "started"
    assert client.post(f"/agent/tasks/{task_id}/pause", headers=AUTH).get_json() == {"status": "paused"}
    assert client.get(f"/agent/tasks/{task_id}", headers=AUTH).get_json()["status"] == "paused"
    assert client.post(f"/agent/tasks/{task_id}/resume", headers=AUTH).get_json() == {"status": "running"}


def test_a_retried_pause_resume_or_cancel_answers_200_with_the_status_reached(client: FlaskClient,
                                                                               store: TaskStore) -> None:
    # Given a running task
    task_id = start(client)
    assert store.claim(task_id, "worker-1")[0] == "started"
    for verb, status in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        # When the call is made twice (a client retrying after a lost answer)
        first = client.post(f"/agent/tasks/{task_id}/{verb}", headers=AUTH)
        events = len(store.read_events(task_id))
        again = client.post(f"/agent/tasks/{task_id}/{verb}", headers=AUTH)
        # Then both answer 200 with the status asked for, and the second wrote nothing
        assert (first.status_code, first.get_json()) == (200, {"status": status}), first.get_data(as_text=True)
        assert (again.status_code, again.get_json()) == (200, {"status": status}), again.get_data(as_text=True)
        assert len(store.read_events(task_id)) == events
    # And once cancelled, what cannot be reached any more is a final 409
    for verb in ("pause", "resume"):
        resp = client.post(f"/agent/tasks/{task_id}/{verb}", headers=AUTH)
        assert error_of(resp, 409)["message"] == f"cannot {verb} a task that is cancelled"
        assert resp.headers["x-should-retry"] == "false"


def test_resume_of_a_queued_task_answers_its_status(client: FlaskClient, store: TaskStore) -> None:
    # A queued task is not paused: there is nothing to resume, and it will run
    task_id = start(client)
    resp = client.post(f"/agent/tasks/{task_id}/resume", headers=AUTH)
    assert (resp.status_code, resp.get_json()) == (200, {"status": "queued"})
    assert store.get(task_id).status == "queued"  # type: ignore[index]
    assert [e["type"] for _, e in store.read_events(task_id)] == ["status"]


@pytest.mark.parametrize("code", [ExitCode.FAILED, ExitCode.TIMED_OUT])
def test_cancel_of_a_task_that_ended_otherwise_is_a_final_409(client: FlaskClient, store: TaskStore,
                                                              code: ExitCode) -> None:
    task_id = start(client)
    run_and_finish(store, task_id, code)
    resp = client.post(f"/agent/tasks/{task_id}/cancel", headers=AUTH)
    assert error_of(resp, 409)["type"] == "conflict" and resp.headers["x-should-retry"] == "false"


def test_a_message_with_a_repeated_idempotency_key_is_delivered_once(client: FlaskClient, store: TaskStore) -> None:
    # Given a queued task
    task_id = start(client)
    headers = {**AUTH, "Idempotency-Key": "msg-1"}
    # When the same message is sent twice with one Idempotency-Key, then once with another key
    first = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "check the footer"}, headers=headers)
    again = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "check the footer"}, headers=headers)
    other = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "check the footer"},
                        headers={**AUTH, "Idempotency-Key": "msg-2"})
    # Then all answer 200, the repeat says it was replayed, and the inbox holds the message twice (two keys)
    for resp in (first, again, other):
        assert (resp.status_code, resp.get_json()) == (200, {"status": "queued"})
    assert again.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert [m["content"] for m in store.inbox(task_id)] == ["check the footer"] * 2
    assert [e["type"] for _, e in store.read_events(task_id)] == ["status", "message", "message"]
    # And the record still reads as a Task (the key is the store's bookkeeping), and after the task ended the
    # repeat still answers as delivered, while a new message is refused
    run_and_finish(store, task_id)
    assert store.get(task_id).status == "completed"  # type: ignore[union-attr]
    late = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "check the footer"}, headers=headers)
    assert (late.status_code, late.get_json()) == (200, {"status": "completed"})
    fresh = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "new"},
                        headers={**AUTH, "Idempotency-Key": "msg-3"})
    assert error_of(fresh, 409)["type"] == "conflict"
    assert len(store.inbox(task_id)) == 2


def test_the_same_idempotency_key_on_another_task_is_another_message(client: FlaskClient, store: TaskStore) -> None:
    first, second = start(client), start(client)
    for task_id in (first, second):
        resp = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "hi"},
                           headers={**AUTH, "Idempotency-Key": "same"})
        assert resp.status_code == 200 and "Idempotent-Replayed" not in resp.headers
        assert len(store.inbox(task_id)) == 1


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_a_bad_idempotency_key_on_a_message_is_a_422(client: FlaskClient, store: TaskStore, key: str) -> None:
    task_id = start(client)
    resp = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "hi"},
                       headers={**AUTH, "Idempotency-Key": key})
    assert list(error_of(resp, 422)["fields"]) == ["Idempotency-Key"]
    assert store.inbox(task_id) == []


@pytest.mark.parametrize(("body", "field"), [({"message": ""}, "message"), ({}, "message"),
                                             ({"message": None}, "message"), ({"message": 5}, "message"),
                                             ({"message": "x" * 10_001}, "message")])
def test_inject_message_rejects_a_bad_message(client: FlaskClient, store: TaskStore, body: dict[str, Any],
                                              field: str) -> None:
    task_id = start(client)
    error = error_of(client.post(f"/agent/tasks/{task_id}/messages", json=body, headers=AUTH), 422)
    assert list(error["fields"]) == [field]
    assert store.inbox(task_id) == []


def test_inject_message_needs_a_json_object(client: FlaskClient) -> None:
    task_id = start(client)
    resp = client.post(f"/agent/tasks/{task_id}/messages", data=b"hello", headers=AUTH)
    assert error_of(resp, 400)["type"] == "invalid_json"


def test_inject_message_into_a_queued_task_is_kept_for_the_worker(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    resp = client.post(f"/agent/tasks/{task_id}/messages", json={"message": "also check the footer"}, headers=AUTH)
    assert resp.status_code == 200 and resp.get_json() == {"status": "queued"}
    assert [m["content"] for m in store.inbox(task_id)] == ["also check the footer"]
    seq, event = store.read_events(task_id)[-1]
    assert seq == 2 and event["type"] == "message" and event["content"] == "also check the footer"


def test_cancel_of_a_queued_task_ends_it(client: FlaskClient, store: TaskStore) -> None:
    # Given a queued task
    task_id = start(client)
    # When it is cancelled
    resp = client.post(f"/agent/tasks/{task_id}/cancel", headers=AUTH)
    # Then it is cancelled with exit code 4, and its event log ends with the end event
    assert resp.status_code == 200 and resp.get_json() == {"status": "cancelled"}
    task = client.get(f"/agent/tasks/{task_id}", headers=AUTH).get_json()
    assert (task["status"], task["exit_code"], task["progress"]) == ("cancelled", 4, 1.0)
    assert task["finished_at"] is not None and task["error"]
    events = store.read_events(task_id)
    assert [e["type"] for _, e in events] == ["status", "end"]
    assert events[-1][1]["exit_code"] == 4 and events[-1][1]["status"] == "cancelled"
    # and a second cancel (a retry) answers the status reached, writing nothing
    again = client.post(f"/agent/tasks/{task_id}/cancel", headers=AUTH)
    assert (again.status_code, again.get_json()) == (200, {"status": "cancelled"})
    assert len(store.read_events(task_id)) == 2


# --- events -------------------------------------------------------------------------------------------------------
def test_events_of_an_ended_task_replay_in_order_and_close(client: FlaskClient, store: TaskStore) -> None:
    # Given a task that ran two steps and completed
    task_id = start(client)
    assert store.claim(task_id, "worker-1")[0] == "started"
    for step in (1, 2):
        store.append_event(task_id, {"type": "step", "step": step, "actions": [{"type": "wait"}], "results": [],
                                     "messages": [], "url": "https://example.com/", "screenshot": {"step": step}})
    assert store.finish(task_id, ExitCode.COMPLETED, result="ok").ok
    # When its event stream is read
    frames = sse_frames(client.get(f"/agent/tasks/{task_id}/events", headers=AUTH))
    # Then every event is replayed once, ids equal seqs 1..n, and the stream ends with the end event
    assert [i for i, _ in frames] == [e["seq"] for _, e in frames] == [1, 2, 3, 4, 5]
    assert [e["type"] for _, e in frames] == ["status", "status", "step", "step", "end"]
    assert frames[-1][1]["status"] == "completed" and frames[-1][1]["result"] == "ok"
    assert all(e["task_id"] == task_id for _, e in frames)
    step = frames[2][1]
    assert f"/agent/tasks/{task_id}/screenshots/1?expires=" in step["screenshot_url"] and "screenshot" not in step
    # And a reconnect with Last-Event-ID (or ?after=) replays only what followed
    tail = sse_frames(client.get(f"/agent/tasks/{task_id}/events", headers={**AUTH, "Last-Event-ID": "3"}))
    assert [i for i, _ in tail] == [4, 5]
    assert [i for i, _ in sse_frames(client.get(f"/agent/tasks/{task_id}/events?after=4", headers=AUTH))] == [5]
    assert sse_frames(client.get(f"/agent/tasks/{task_id}/events?after=5", headers=AUTH)) == []


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_events_reject_a_bad_last_event_id(client: FlaskClient, value: str) -> None:
    task_id = start(client)
    resp = client.get(f"/agent/tasks/{task_id}/events", headers={**AUTH, "Last-Event-ID": value})
    assert list(error_of(resp, 422)["fields"]) == ["Last-Event-ID"]


def test_start_stream_begins_with_the_queued_event(client: FlaskClient, store: TaskStore) -> None:
    resp = client.post("/agent/tasks/stream", json=VALID, headers=AUTH)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    chunks: Iterator[Any] = iter(resp.response)
    try:
        text = ""
        for chunk in chunks:
            text += chunk.decode() if isinstance(chunk, bytes) else chunk
            if "data: " in text and text.endswith("\n\n"):
                break
    finally:
        resp.close()
    block = next(b for b in text.split("\n\n") if b.startswith("id: "))
    event = json.loads(block.split("data: ", 1)[1])
    assert block.startswith("id: 1\n") and event["seq"] == 1 and event["status"] == "queued"
    assert store.get(event["task_id"]).status == Status.QUEUED  # type: ignore[index]


@pytest.mark.parametrize("text", ["", "q", "queued", "queued behind", "queued behind 12 tasks", "no worker",
                                  "no worker for kind desktop", "tenant max_running reached", "rate limited!",
                                  "x", "queued x", "queued\n", " queued", "rate  limited", "Queued"])
def test_the_documented_wait_reason_pattern_is_the_filters_rule(text: str) -> None:
    # The OpenAPI document gives WAIT_REASON_PATTERN: it takes exactly what the list's filter takes
    from api.routes.tasks import WAIT_REASON_PATTERN
    from shared.store.queueinfo import REASONS

    rule = not text or any(r.startswith(text) or text.startswith(r) for r in REASONS)
    assert (re.fullmatch(WAIT_REASON_PATTERN[1:-1], text) is not None) is rule


# --- trajectories and replays (end to end: tests/e2e/test_trajectory.py) --------------------------------------------
def test_replay_of_names_an_ended_task_of_the_caller_and_takes_its_environment(client: FlaskClient,
                                                                               store: TaskStore) -> None:
    unknown = client.post("/agent/tasks", json={"instruction": "replay", "replay_of": "task_nope"}, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json is not None
    assert unknown.json["error"]["fields"] == {"replay_of": ["no task task_nope (or it expired)"]}
    source = start(client, viewport_width=800, viewport_height=600, start_url="https://a.test/")
    early = client.post("/agent/tasks", json={"instruction": "replay", "replay_of": source}, headers=AUTH)
    assert early.status_code == 409 and early.headers["x-should-retry"] == "true"
    store.claim(source, "w:1")
    assert store.finish(source, ExitCode.COMPLETED, result="ok", fields={"steps_taken": 4}).ok
    other = client.post("/agent/tasks", json={"instruction": "replay", "replay_of": source},
                        headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert other.status_code == 404  # another tenant's task is as unknown as a missing one
    replay_id = start(client, instruction="replay", replay_of=source, viewport_width=1024)
    replay = store.get(replay_id)
    assert replay is not None and replay.replay_of == source and replay.agent_type == "replay"
    assert (replay.viewport_width, replay.viewport_height, replay.start_url, replay.max_steps) == (
        800, 600, "https://a.test/", 5)
    assert client.get(f"/agent/tasks/{replay_id}", headers=AUTH).json["replay_of"] == source  # type: ignore[index]


def test_the_trajectory_is_the_task_and_its_recorded_steps(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    store.claim(task_id, "w:1")
    event = {"type": "step", "task_id": task_id, "step": 1, "attempt": 1, "ts": 1.0, "url": "https://a.test/",
             "actions": [{"type": "click", "x": 5, "y": 6}], "results": [{"ok": True, "x": 5, "y": 6}],
             "thought": "t", "messages": [], "screenshot": {"step": 1}, "native": [{"type": "computer_call"}],
             "timings": {"observe_ms": 1.0, "decide_ms": 2.0, "act_ms": 3.0},
             "elements": [{"role": "button", "name": "Go"}], "aria": True}
    import gzip

    from shared.artifacts import aria_name

    assert store.record_step(task_id, 1, b"\xff\xd8jpeg", {"steps_taken": 1}, event, holder="w:1",
                             extra=[(aria_name(1), gzip.compress(b'- button "Go"'), "application/gzip")]).ok
    resp = client.get(f"/agent/tasks/{task_id}/trajectory", headers=AUTH)
    assert resp.status_code == 200 and resp.json is not None
    assert resp.json["format"] == "lodestar.trajectory/1" and resp.json["task"]["task_id"] == task_id
    [step] = resp.json["steps"]
    assert step["aria"] == '- button "Go"' and step["native_action"] == [{"type": "computer_call"}]
    assert step["elements"] == [{"role": "button", "name": "Go"}] and step["timings"]["act_ms"] == 3.0
    assert step["screenshot"]["step"] == 1 and "/screenshots/1?" in step["screenshot"]["url"]
    assert client.get(step["screenshot"]["url"]).data == b"\xff\xd8jpeg"  # signed: no key needed
    assert client.get(f"/agent/tasks/{task_id}/trajectory",
                      headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404


def test_wait_reason_with_only_other_statuses_matches_nothing(client: FlaskClient) -> None:
    start(client)
    resp = client.get("/agent/tasks?status=running&wait_reason=queued", headers=AUTH)
    assert resp.status_code == 200 and resp.json is not None and resp.json["data"] == []
    assert client.get("/agent/tasks?wait_reason=bogus", headers=AUTH).status_code == 422


def test_a_replay_keeps_its_recordings_kind_whatever_environment_it_names(client: FlaskClient,
                                                                          store: TaskStore) -> None:
    # Given a browser recording and a desktop environment of the tenant
    source = start(client)
    store.claim(source, "w:1")
    assert store.finish(source, ExitCode.COMPLETED, result="ok", fields={"steps_taken": 2}).ok
    desktop = store.get(start(client, persistent=True, kind="desktop"))
    assert desktop is not None and desktop.environment_id
    client.post(f"/agent/tasks/{desktop.task_id}/cancel", headers=AUTH)
    # When a replay names that environment and no kind, then it is not moved to a desktop: the environment is of
    # the other kind (a 422 naming it), as for any task of a given kind
    resp = client.post("/agent/tasks", json={"instruction": "replay", "replay_of": source,
                                             "environment_id": desktop.environment_id}, headers=AUTH)
    assert resp.status_code == 422 and "environment_id" in resp.json["error"]["fields"], resp.json  # type: ignore[index]
