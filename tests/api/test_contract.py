"""What the OpenAPI document promises, case by case (the fuzzer in test_fuzz.py explores the rest): methods not
served are a 405 with Allow, /ws answers plain HTTP with 401 / 404 / 426, an empty batch and a cancel naming no
tasks are 422s the document forbids, and every operation lists the errors it can answer."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from tests.api.test_routes import AUTH, api_settings, error_of, start

pytestmark = pytest.mark.redis


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(test_config=api_settings(settings))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    return dict(client.get("/openapi.json").get_json())


def concrete(path: str) -> str:
    return path.replace("{id}", "task_x").replace("{step}", "1")


@pytest.mark.parametrize("method", ["TRACE", "PUT", "DELETE", "PATCH"])
def test_a_method_not_served_is_a_405_with_allow_listing_the_documented_ones(client: FlaskClient,
                                                                             spec: dict[str, Any],
                                                                             method: str) -> None:
    for path, item in spec["paths"].items():
        if method.lower() in item:  # served here (DELETE /agent/environments/{id})
            continue
        resp = client.open(concrete(path), method=method, headers=AUTH)
        assert error_of(resp, 405)["type"] == "method_not_allowed", path
        allowed = {m.strip().lower() for m in resp.headers["Allow"].split(",")} - {"head", "options"}
        assert allowed == set(item), (path, resp.headers["Allow"])


def test_the_calls_under_agent_tasks_are_not_task_ids(client: FlaskClient) -> None:
    for name in ("batch", "cancel", "stream"):
        resp = client.get(f"/agent/tasks/{name}", headers=AUTH)
        assert error_of(resp, 405)["type"] == "method_not_allowed" and "POST" in resp.headers["Allow"]
    # a task id that merely starts with one of them is a task id
    assert error_of(client.get("/agent/tasks/batch_of_one", headers=AUTH), 404)["type"] == "not_found"


def test_websocket_endpoint_over_plain_http(client: FlaskClient) -> None:
    task_id = start(client)
    path = f"/agent/tasks/{task_id}/ws"
    assert error_of(client.get(path), 401)["type"] == "unauthorized"  # no key: 401, as everywhere
    assert error_of(client.get("/agent/tasks/task_nope/ws", headers=AUTH), 404)["type"] == "not_found"
    resp = client.get(path, headers=AUTH)
    assert error_of(resp, 426)["type"] == "upgrade_required" and resp.headers["Upgrade"] == "websocket"


@pytest.mark.parametrize("body", [[], {"tasks": []}])
def test_an_empty_batch_is_a_422_and_the_document_says_so(client: FlaskClient, spec: dict[str, Any],
                                                            body: Any) -> None:
    error = error_of(client.post("/agent/tasks/batch", json=body, headers=AUTH), 422)
    assert error["message"] == "the batch is empty"
    schema = spec["paths"]["/agent/tasks/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [alt.get("minItems", alt.get("properties", {}).get("tasks", {}).get("minItems")) for alt in
            schema["anyOf"]] == [1, 1]


@pytest.mark.parametrize("body", [{}, {"filter": None}, {"task_ids": "task_x"}, {"task_ids": [1]},
                                  {"filter": {"status": "completed"}}, {"filter": {"status": "queued,,running"}},
                                  {"filter": {"status": ["done"]}}, {"filter": {"metadata": {"k": 1}}}])
def test_a_bulk_cancel_that_names_no_tasks_properly_is_a_422(client: FlaskClient, body: dict[str, Any]) -> None:
    error = error_of(client.post("/agent/tasks/cancel", json=body, headers=AUTH), 422)
    assert error["fields"]


@pytest.mark.parametrize(("body", "cancelled"), [({"task_ids": []}, 0), ({"filter": {}}, 1),
                                                 ({"filter": {"status": ""}}, 1),
                                                 ({"filter": {"status": "queued,paused"}}, 1),
                                                 ({"filter": {"status": ["running"]}}, 0)])
def test_a_bulk_cancel_by_ids_or_filter(client: FlaskClient, body: dict[str, Any], cancelled: int) -> None:
    start(client)
    resp = client.post("/agent/tasks/cancel", json=body, headers=AUTH)
    assert resp.status_code == 200 and len(resp.get_json()["cancelled"]) == cancelled


def test_every_operation_documents_the_errors_it_can_answer(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"413", "414"} <= codes, (path, method)  # a body over the limit; the request line's limit
            if op.get("security") != []:
                assert {"401", "429", "503"} <= codes, (path, method)
            if "requestBody" in op:
                assert {"400", "422"} <= codes, (path, method)
            if "{id}" in path:
                assert "404" in codes, (path, method)


def test_event_streams_are_documented_as_server_sent_events(spec: dict[str, Any]) -> None:
    for path, method in (("/agent/tasks/stream", "post"), ("/agent/tasks/{id}/events", "get")):
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        assert list(content) == ["text/event-stream"]
        data = content["text/event-stream"]["schema"]["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        assert data["contentSchema"] == {"$ref": "#/components/schemas/Event"}


def test_the_model_rule_is_in_the_document(client: FlaskClient, spec: dict[str, Any]) -> None:
    import re

    rule = spec["components"]["schemas"]["TaskStart"]["anyOf"]
    pattern = rule[1]["properties"]["model"]["pattern"]
    for model in ("tzafon.northstar-cua-fast", "openai/computer-use-preview", "anthropic/claude-sonnet-4-5"):
        assert re.search(pattern, model), model
        resp = client.post("/agent/tasks", json={"instruction": "x", "model": model}, headers=AUTH)
        assert resp.status_code == 200, resp.get_json()
    assert not re.search(pattern, "gpt-7")
    error = error_of(client.post("/agent/tasks", json={"instruction": "x", "model": "gpt-7"}, headers=AUTH), 422)
    assert list(error["fields"]) == ["model"]
    # with an offline agent_type, the model is not used and not checked (the first branch of the rule)
    assert rule[0] == {"required": ["agent_type"]}
    resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted", "model": "gpt-7"},
                       headers=AUTH)
    assert resp.status_code == 200


@pytest.mark.parametrize(("value", "ok"), [(5.0, True), (5, True), (5.5, False), ("5", False), (True, False)])
def test_integers_are_json_integers(client: FlaskClient, value: Any, ok: bool) -> None:
    resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted", "max_steps": value},
                       headers=AUTH)
    assert resp.status_code == (200 if ok else 422), resp.get_json()


@pytest.mark.parametrize(("field", "value"), [("temperature", "0.5"), ("temperature", True), ("persistent", 1),
                                              ("persistent", "true"), ("keep_alive", "yes")])
def test_numbers_and_booleans_are_not_strings(client: FlaskClient, field: str, value: Any) -> None:
    resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted", field: value},
                       headers=AUTH)
    assert list(error_of(resp, 422)["fields"]) == [field]


@pytest.mark.parametrize(("value", "ok"), [
    ("https://example.com/a?b=c#d", True), ("http://127.0.0.1:8080/", True), ("HTTP://[::1]/", True),
    ("https://user:pw@example.com", True), ("ftp://example.com", False), ("https://exa mple.com", False),
    ("https://example.com/\n", False), ("javascript:alert(1)", False), ("https://", False)])
def test_urls_follow_the_documented_pattern(client: FlaskClient, spec: dict[str, Any], value: str,
                                            ok: bool) -> None:
    import re

    pattern = spec["components"]["schemas"]["TaskStart"]["properties"]["start_url"]["pattern"]
    assert bool(re.fullmatch(pattern, value)) is ok  # anchored: ECMA's $ does not let a final newline through
    resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted",
                                             "start_url": value, "webhook_url": value}, headers=AUTH)
    assert resp.status_code == (200 if ok else 422), resp.get_json()


@pytest.mark.parametrize(("query", "ok"), [("created_after=1795000000", True), ("created_after=1.7e9", True),
                                           ("created_after=2026-11-28T08:20:39Z", True),
                                           ("created_after=2026-11-28T08:20:39.5%2B01:00", True),
                                           ("created_after=", True), ("created_after=2026-11-28", False),
                                           ("created_after=2026-11-28T08:20:39", False),
                                           ("created_after=-5", False), ("created_after=2026-02-30T00:00:00Z", False),
                                           ("cursor=", True), ("cursor=1795000000.5~task_x", True),
                                           ("cursor=abc", False), ("status=queued,running", True),
                                           ("status=done", False), ("metadata[customer]=acme", True)])
def test_list_query_parameters_follow_the_document(client: FlaskClient, query: str, ok: bool) -> None:
    resp = client.get(f"/agent/tasks?{query}", headers=AUTH)
    assert resp.status_code == (200 if ok else 422), resp.get_json()
