"""Screenshots by signed URL (issue 12): the URLs in the task JSON and step events load without the bearer key; a
tampered, expired or other tenant's URL is a 403; the bearer key still works. Flask's test client on real Redis."""

from __future__ import annotations

import dataclasses
import urllib.parse

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from shared.signing import screenshot_resource
from shared.states import ExitCode
from shared.store import TaskStore
from tests.api.test_routes import AUTH, OTHER, api_settings, error_of
from tests.conftest import app_state

pytestmark = pytest.mark.redis

JPEG = b"\xff\xd8\xff\xe0 a jpeg"


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(test_config=api_settings(settings))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> TaskStore:
    return app_state(app).store


def with_step(client: FlaskClient, store: TaskStore, headers: dict[str, str] = AUTH) -> tuple[str, str]:
    """A running task of the caller that took one step; returns (task id, its last_screenshot_url)."""
    resp = client.post("/agent/tasks", json={"instruction": "wait 1", "agent_type": "scripted"}, headers=headers)
    task_id = resp.get_json()["task_id"]
    assert store.claim(task_id, "worker-1")[0] == "started"
    assert store.record_step(task_id, 1, JPEG, {"steps_taken": 1}, {"type": "step", "step": 1,
                                                                     "screenshot": {"step": 1}}).ok
    url = client.get(f"/agent/tasks/{task_id}", headers=headers).get_json()["last_screenshot_url"]
    return task_id, url


def path_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_the_last_screenshot_url_loads_without_the_key(client: FlaskClient, store: TaskStore) -> None:
    _, url = with_step(client, store)
    resp = client.get(path_of(url))  # no Authorization header
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg" and resp.data == JPEG


def test_a_step_events_screenshot_url_loads_without_the_key(client: FlaskClient, store: TaskStore) -> None:
    task_id, _ = with_step(client, store)
    store.finish(task_id, ExitCode.COMPLETED)
    body = client.get(f"/agent/tasks/{task_id}/events", headers=AUTH).get_data(as_text=True)
    url = next(line for line in body.splitlines() if '"screenshot_url"' in line)
    url = url.split('"screenshot_url":"', 1)[1].split('"', 1)[0]
    assert client.get(path_of(url)).data == JPEG


@pytest.mark.parametrize("change", ["sig", "expires", "step", "no-expiry"])
def test_a_tampered_url_is_a_403(client: FlaskClient, store: TaskStore, change: str) -> None:
    task_id, url = with_step(client, store)
    store.put_screenshot(task_id, 2, JPEG)
    path, _, query = path_of(url).partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    if change == "sig":
        params["sig"] = ("A" if params["sig"][0] != "A" else "B") + params["sig"][1:]
    elif change == "expires":
        params["expires"] = str(int(params["expires"]) + 3600)
    elif change == "step":
        path = path.replace("/screenshots/1", "/screenshots/2")
    else:
        del params["expires"]
    resp = client.get(f"{path}?{urllib.parse.urlencode(params)}")
    assert error_of(resp, 403)["type"] == "forbidden"


@pytest.mark.parametrize("value", ["soon", "-1", "", "1" * 13])
def test_a_malformed_expiry_is_a_422_naming_it(client: FlaskClient, store: TaskStore, value: str) -> None:
    task_id, url = with_step(client, store)
    params = {**dict(urllib.parse.parse_qsl(path_of(url).partition("?")[2])), "expires": value}
    resp = client.get(f"/agent/tasks/{task_id}/screenshots/1?{urllib.parse.urlencode(params)}")
    assert list(error_of(resp, 422)["fields"]) == ["expires"]


@pytest.mark.parametrize("sig", ["x" * 42, "x" * 42 + "=", "not a signature"])
def test_a_malformed_signature_is_a_403_and_an_empty_one_is_no_signature(client: FlaskClient, store: TaskStore,
                                                                          sig: str) -> None:
    task_id, url = with_step(client, store)
    params = {**dict(urllib.parse.parse_qsl(path_of(url).partition("?")[2])), "sig": sig}
    resp = client.get(f"/agent/tasks/{task_id}/screenshots/1?{urllib.parse.urlencode(params)}")
    assert "malformed" in error_of(resp, 403)["message"]
    params["sig"] = ""
    resp = client.get(f"/agent/tasks/{task_id}/screenshots/1?{urllib.parse.urlencode(params)}")
    assert error_of(resp, 401)["type"] == "unauthorized"


def test_an_expired_url_is_a_403(app: Flask, client: FlaskClient, store: TaskStore) -> None:
    task_id, _ = with_step(client, store)
    signer = app_state(app).signer
    tenant = store.get(task_id).tenant  # type: ignore[union-attr]
    expired = signer.query(tenant, screenshot_resource(task_id, 1), expires=int(signer.clock()) - 1)
    error = error_of(client.get(f"/agent/tasks/{task_id}/screenshots/1?{expired}"), 403)
    assert "expired" in error["message"]


def test_another_tenants_task_with_this_signature_is_a_403(client: FlaskClient, store: TaskStore) -> None:
    # Given a task of tenant A with a signed URL, and a task of tenant B with a screenshot at the same step
    _, url = with_step(client, store)
    theirs, _ = with_step(client, store, headers=OTHER)
    # When A's signature is used with B's task id
    query = path_of(url).partition("?")[2]
    resp = client.get(f"/agent/tasks/{theirs}/screenshots/1?{query}")
    # Then it is refused, as is a signature for a task id that does not exist
    assert error_of(resp, 403)["type"] == "forbidden"
    assert error_of(client.get(f"/agent/tasks/task_nope/screenshots/1?{query}"), 403)["type"] == "forbidden"


def test_the_bearer_key_still_opens_screenshots(client: FlaskClient, store: TaskStore) -> None:
    task_id, url = with_step(client, store)
    assert client.get(f"/agent/tasks/{task_id}/screenshots/1", headers=AUTH).data == JPEG
    # a key wins over a (stale) signature; another tenant's key sees no such task
    params = dict(urllib.parse.parse_qsl(path_of(url).partition("?")[2]))
    params["sig"] = ("A" if params["sig"][0] != "A" else "B") + params["sig"][1:]
    stale = f"/agent/tasks/{task_id}/screenshots/1?{urllib.parse.urlencode(params)}"
    assert client.get(stale, headers=AUTH).data == JPEG
    assert error_of(client.get(path_of(url), headers=OTHER), 404)["type"] == "not_found"
    # and with neither a key nor a signature it is a 401
    assert error_of(client.get(f"/agent/tasks/{task_id}/screenshots/1"), 401)["type"] == "unauthorized"


def test_a_configured_signing_key_signs_and_a_short_one_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="LODESTAR_URL_SIGNING_KEY"):
        create_app(test_config=api_settings(dataclasses.replace(settings, url_signing_key="too short")))
    app = create_app(test_config=api_settings(dataclasses.replace(settings, url_signing_key="s" * 40)))
    assert app_state(app).signer.key == b"s" * 40
