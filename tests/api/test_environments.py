"""Persistent environments through the API (no worker): ``persistent`` makes an environment the task's JSON shows,
one persistent task at a time per environment (409 naming environment_id), restore-only tasks never refused,
unknown or other tenants' ids (404 naming the field), another kind (422), and GET / DELETE /agent/environments per
tenant."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from shared.store import TaskStore
from tests.api.test_routes import AUTH, OTHER, api_settings, error_of, start
from tests.conftest import app_state

pytestmark = pytest.mark.redis


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(test_config=api_settings(settings))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> TaskStore:
    return app_state(app).store


def task_json(client: FlaskClient, task_id: str, headers: dict[str, str] = AUTH) -> dict[str, Any]:
    resp = client.get(f"/agent/tasks/{task_id}", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return dict(resp.get_json())


def cancel(client: FlaskClient, task_id: str) -> None:
    assert client.post(f"/agent/tasks/{task_id}/cancel", headers=AUTH).status_code == 200


def test_a_persistent_task_gets_an_environment_of_its_tenant(client: FlaskClient) -> None:
    # Given a persistent task (save_session, the SDK's name, means the same)
    first = start(client, persistent=True)
    body = task_json(client, first)
    env_id = body["environment_id"]
    assert body["persistent"] is True and env_id.startswith("env_")
    assert task_json(client, start(client, save_session=True))["environment_id"] not in (None, env_id)
    # Then the tenant's environments list it, held by the task, nothing saved yet
    listed = client.get("/agent/environments", headers=AUTH).get_json()
    row = next(e for e in listed["data"] if e["environment_id"] == env_id)
    assert (row["kind"], row["in_use_by"], row["size_bytes"], row["saved_at"], row["saves"]) == (
        "browser", first, 0, None, 0)
    assert row["expires_at"] and listed["has_more"] is False
    assert client.get(f"/agent/environments/{env_id}", headers=AUTH).get_json() == row
    # And a task that is not persistent has none
    assert task_json(client, start(client))["environment_id"] is None
    # And another tenant sees none of it: not in its list, 404 for the id, by GET and DELETE
    assert client.get("/agent/environments", headers=OTHER).get_json() == {"data": [], "next_cursor": None,
                                                                           "has_more": False}
    assert error_of(client.get(f"/agent/environments/{env_id}", headers=OTHER), 404)["type"] == "not_found"
    assert error_of(client.delete(f"/agent/environments/{env_id}", headers=OTHER), 404)["type"] == "not_found"


def test_one_persistent_task_at_a_time_per_environment(client: FlaskClient) -> None:
    # Given a persistent task holding its environment
    first = start(client, persistent=True)
    env_id = task_json(client, first)["environment_id"]
    # When another persistent task names it, then it is refused with 409 naming environment_id and the holder
    resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted",
                                             "persistent": True, "environment_id": env_id}, headers=AUTH)
    error = error_of(resp, 409)
    assert error["type"] == "environment_in_use" and list(error["fields"]) == ["environment_id"]
    assert first in error["message"] and resp.headers["x-should-retry"] == "false"
    # And a task that only restores it is never refused
    reader = start(client, environment_id=env_id)
    assert task_json(client, reader)["environment_id"] == env_id and task_json(client, reader)["persistent"] is False
    # When the holder ends (cancelled here), the next persistent task takes it
    cancel(client, first)
    second = start(client, persistent=True, environment_id=env_id)
    assert task_json(client, second)["environment_id"] == env_id
    assert client.get(f"/agent/environments/{env_id}", headers=AUTH).get_json()["in_use_by"] == second


def test_unknown_other_tenants_and_other_kinds_environments_are_refused(client: FlaskClient) -> None:
    env_id = task_json(client, start(client, persistent=True))["environment_id"]
    for body in ({"environment_id": "env_nope"}, {"environment_id": "env_nope", "persistent": True}):
        resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted", **body},
                           headers=AUTH)
        assert list(error_of(resp, 404)["fields"]) == ["environment_id"]
    for persistent in (False, True):
        resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted",
                                                 "environment_id": env_id, "persistent": persistent}, headers=OTHER)
        assert list(error_of(resp, 404)["fields"]) == ["environment_id"]
        resp = client.post("/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted",
                                                 "kind": "desktop", "environment_id": env_id,
                                                 "persistent": persistent}, headers=AUTH)
        error = error_of(resp, 422)
        assert list(error["fields"]) == ["environment_id"] and "browser environment" in error["message"]
    assert task_json(client, start(client, environment_id=""))["environment_id"] is None  # "" names none


def test_a_task_naming_an_environment_without_a_kind_takes_its_kind(client: FlaskClient) -> None:
    env_id = task_json(client, start(client, persistent=True, kind="desktop"))["environment_id"]
    assert task_json(client, start(client, environment_id=env_id))["kind"] == "desktop"
    assert task_json(client, start(client, environment_id=env_id, start_url="https://example.com/"))["kind"] == (
        "desktop")


def test_a_refused_task_frees_its_idempotency_key(client: FlaskClient) -> None:
    first = start(client, persistent=True)
    env_id = task_json(client, first)["environment_id"]
    body = {"instruction": 'done "x"', "agent_type": "scripted", "persistent": True, "environment_id": env_id,
            "idempotency_key": "env-retry"}
    assert client.post("/agent/tasks", json=body, headers=AUTH).status_code == 409
    cancel(client, first)
    resp = client.post("/agent/tasks", json=body, headers=AUTH)  # the retry once the holder ended creates it
    assert resp.status_code == 200 and resp.get_json()["reused"] is False


def test_a_batch_refuses_only_the_items_whose_environment_is_in_use(client: FlaskClient) -> None:
    env_id = task_json(client, start(client, persistent=True))["environment_id"]
    item = {"instruction": 'done "x"', "agent_type": "scripted"}
    resp = client.post("/agent/tasks/batch", json=[{**item, "persistent": True, "environment_id": env_id},
                                                   {**item, "environment_id": env_id},
                                                   {**item, "environment_id": "env_nope"},
                                                   {**item, "persistent": True}], headers=AUTH)
    body = resp.get_json()
    assert resp.status_code == 200 and body["accepted"] == 2 and [t["index"] for t in body["tasks"]] == [1, 3]
    assert [(e["index"], e["error"]["type"]) for e in body["errors"]] == [(0, "environment_in_use"),
                                                                          (2, "not_found")]


def test_delete_an_environment(client: FlaskClient, store: TaskStore) -> None:
    # Given an environment with a saved state, held by its running persistent task
    first = start(client, persistent=True)
    env_id = task_json(client, first)["environment_id"]
    tenant = store.get(first).tenant  # type: ignore[union-attr]
    assert store.environments.save(env_id, tenant, first, b'{"cookies": []}') is None
    row = client.get(f"/agent/environments/{env_id}", headers=AUTH).get_json()
    assert (row["size_bytes"], row["saves"], row["source_task_id"]) == (15, 1, first) and row["saved_at"]
    # When it is deleted while the task holds it: 409
    error = error_of(client.delete(f"/agent/environments/{env_id}", headers=AUTH), 409)
    assert error["type"] == "environment_in_use" and first in error["message"]
    # When the task has ended: deleted, with its state; then it is gone for reading and for new tasks
    cancel(client, first)
    assert client.delete(f"/agent/environments/{env_id}", headers=AUTH).get_json() == {
        "environment_id": env_id, "deleted": True}
    assert store.artifacts.get(env_id, f"environment/state-{first}.json") is None
    assert error_of(client.get(f"/agent/environments/{env_id}", headers=AUTH), 404)["type"] == "not_found"
    assert error_of(client.delete(f"/agent/environments/{env_id}", headers=AUTH), 404)["type"] == "not_found"
    resp = client.post("/agent/tasks", json={"instruction": "x", "agent_type": "scripted",
                                             "environment_id": env_id}, headers=AUTH)
    assert list(error_of(resp, 404)["fields"]) == ["environment_id"]


@pytest.mark.parametrize(("query", "field"), [("kind=laptop", "kind"), ("kind=", "kind"), ("limit=0", "limit"),
                                              ("limit=x", "limit"), ("cursor=abc", "cursor"),
                                              ("limit=100000", "limit")])
def test_list_query_parameters_are_checked(client: FlaskClient, query: str, field: str) -> None:
    assert list(error_of(client.get(f"/agent/environments?{query}", headers=AUTH), 422)["fields"]) == [field]


def test_listing_filters_by_kind_and_pages(client: FlaskClient) -> None:
    browser = [task_json(client, start(client, persistent=True))["environment_id"] for _ in range(5)]
    desktop = task_json(client, start(client, persistent=True, kind="desktop"))["environment_id"]
    assert [e["environment_id"] for e in client.get("/agent/environments?kind=desktop",
                                                    headers=AUTH).get_json()["data"]] == [desktop]
    # pages of 2 walk every browser environment once, newest first, then say it is the last page
    seen, cursor, pages = [], "", 0
    while True:
        page = client.get(f"/agent/environments?kind=browser&limit=2&cursor={cursor}", headers=AUTH).get_json()
        seen += [e["environment_id"] for e in page["data"]]
        pages += 1
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == browser[::-1] and pages == 3


def test_the_document_describes_the_environment_fields_and_routes(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    start_props = spec["components"]["schemas"]["TaskStart"]["properties"]
    assert "environment_in_use" in start_props["persistent"]["description"]
    assert "404" in start_props["environment_id"]["description"]
    assert "environment_id" not in spec["info"]["description"].split("Accepted but without effect")[1].split(".")[0]
    assert {"environment_id", "persistent"} <= set(spec["components"]["schemas"]["Task"]["properties"])
    assert set(spec["paths"]["/agent/environments/{id}"]) == {"get", "delete"}
    assert "404" in spec["paths"]["/agent/tasks"]["post"]["responses"]


def test_lodestar_environments_cli_lists_gets_and_deletes(redis_base: str) -> None:
    import json
    import subprocess
    import sys

    import requests

    from tests.api.server import api_process

    with api_process(redis_base) as api:
        def cli(*args: str) -> tuple[int, Any]:
            out = subprocess.run([sys.executable, "-m", "lodestar.cli", "environments", "--url", api.base_url,
                                  "--key", api.key, *args], capture_output=True, text=True, timeout=90)
            return out.returncode, json.loads(out.stdout)

        # Given two persistent tasks queued (no worker), each holding an environment of its own
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {api.key}"
        ids = [http.post(f"{api.base_url}/agent/tasks", json={"instruction": 'done "x"', "agent_type": "scripted",
                                                               "persistent": True}, timeout=30).json()["task_id"]
               for _ in range(2)]
        tasks = [http.get(f"{api.base_url}/agent/tasks/{task_id}", timeout=30).json() for task_id in ids]
        env_ids = {t["environment_id"] for t in tasks}
        # When the CLI lists, gets and deletes them
        code, listed = cli("list", "--kind", "browser")
        assert code == 0 and {e["environment_id"] for e in listed["data"]} == env_ids
        code, page = cli("list", "--limit", "1")
        assert code == 0 and len(page["data"]) == 1 and page["has_more"] and page["next_cursor"]
        code, rest = cli("list", "--limit", "1", "--cursor", page["next_cursor"])
        assert code == 0 and {page["data"][0]["environment_id"], rest["data"][0]["environment_id"]} == env_ids
        first = tasks[0]
        code, one = cli("get", first["environment_id"])
        assert code == 0 and one["in_use_by"] == first["task_id"]
        # Then an environment held by its persistent task is refused (exit 1, the API's 409 printed), and deleted
        # once the task is cancelled; an unknown one is exit 1 with the API's 404
        code, refused = cli("delete", first["environment_id"])
        assert code == 1 and refused["error"]["type"] == "environment_in_use", refused
        assert http.post(f"{api.base_url}/agent/tasks/{first['task_id']}/cancel", timeout=30).status_code == 200
        assert cli("delete", first["environment_id"]) == (0, {"environment_id": first["environment_id"],
                                                              "deleted": True})
        code, missing = cli("get", first["environment_id"])
        assert code == 1 and missing["error"]["type"] == "not_found", missing
