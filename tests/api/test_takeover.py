"""Human takeover and share links through Flask's test client on a real Redis, with no worker: what the API answers
by itself (422 naming the field, 404 across tenants, 409 unless paused and held, 504 when the holder never answers
and the action withdrawn), and share links that open one task's record read-only until they expire. The worker's
side (the action performed in the task's browser) is tests/e2e/test_console.py."""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from shared.states import ExitCode, Status
from shared.store import TaskStore
from tests.api.test_routes import AUTH, OTHER, api_settings, error_of, start
from tests.conftest import app_state

pytestmark = pytest.mark.redis

CLICK = {"type": "click", "x": 200, "y": 150}


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(test_config=api_settings(settings, takeover_timeout=0.5))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> TaskStore:
    return app_state(app).store


def paused_task(client: FlaskClient, store: TaskStore, held: bool = True) -> str:
    """A task that a worker ("w-test", which never answers) claimed and the user paused; ``held`` False: the worker
    let it go (its lease is gone, as after ``pause_timeout``)."""
    task_id = start(client)
    assert store.claim(task_id, "w-test")[0] == "started"
    assert client.post(f"/agent/tasks/{task_id}/pause", headers=AUTH).get_json() == {"status": "paused"}
    if not held:
        assert store.release_lease(task_id, "w-test")
    return task_id


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "click"}, "x"),
    ({"type": "click", "x": 1280, "y": 10}, "x"),  # outside the 1280x720 viewport
    ({"type": "click", "x": 10, "y": 720}, "y"),
    ({"type": "click", "x": -1, "y": 10}, "x"),
    ({"type": "click", "x": "10", "y": 10}, "x"),
    ({"type": "type"}, "text"),
    ({"type": "key"}, "keys"),
    ({"type": "drag", "x": 1, "y": 1}, "x2"),
    ({"type": "navigate", "url": "javascript:alert(1)"}, "url"),
    ({"type": "done"}, "type"),
    ({"type": "rm -rf"}, "type"),
    ({}, "type"),
    ({"type": "click", "target": {"by": "xpath", "name": "a"}}, "target"),
])
def test_a_bad_action_is_a_422_naming_the_field(client: FlaskClient, store: TaskStore, body: dict[str, Any],
                                                field: str) -> None:
    task_id = paused_task(client, store)
    error = error_of(client.post(f"/agent/tasks/{task_id}/actions", json=body, headers=AUTH), 422)
    assert field in error["fields"], error


def test_actions_are_taken_only_while_paused_and_held(client: FlaskClient, store: TaskStore) -> None:
    # Given a queued task, a running one, a paused one its worker let go, and an ended one
    queued = start(client)
    running = start(client)
    store.claim(running, "w-test")
    released = paused_task(client, store, held=False)
    ended = start(client)
    client.post(f"/agent/tasks/{ended}/cancel", headers=AUTH)
    # Then an action for any of them is a 409 that says why, and retrying cannot help
    for task_id, why in ((queued, "queued"), (running, "running"), (released, "no worker holds it"),
                         (ended, "cancelled")):
        resp = client.post(f"/agent/tasks/{task_id}/actions", json=CLICK, headers=AUTH)
        assert why in error_of(resp, 409)["message"]
        assert resp.headers["x-should-retry"] == "false"
    # and nothing waits for a worker
    assert all(store.takeover.take(t) == [] for t in (queued, running, released, ended))


def test_another_tenants_task_is_a_404(client: FlaskClient, store: TaskStore) -> None:
    task_id = paused_task(client, store)
    assert error_of(client.post(f"/agent/tasks/{task_id}/actions", json=CLICK, headers=OTHER), 404)
    assert error_of(client.post(f"/agent/tasks/{task_id}/share", json={}, headers=OTHER), 404)
    assert error_of(client.post("/agent/tasks/task_nope/actions", json=CLICK, headers=AUTH), 404)
    assert store.takeover.take(task_id) == []


def test_a_worker_that_never_answers_is_a_504_and_the_action_is_withdrawn(client: FlaskClient,
                                                                          store: TaskStore) -> None:
    # Given a paused task whose worker holds it but never answers (no worker process here)
    task_id = paused_task(client, store)
    # When the user acts on it
    resp = client.post(f"/agent/tasks/{task_id}/actions", json=CLICK, headers=AUTH)
    # Then after LODESTAR_TAKEOVER_TIMEOUT the answer is a 504 and the action is no longer waiting
    assert error_of(resp, 504)["type"] == "worker_timeout"
    assert store.takeover.take(task_id) == []
    assert store.status(task_id) == Status.PAUSED


def test_an_action_waits_for_the_worker_holding_the_task(client: FlaskClient, store: TaskStore) -> None:
    # Given a paused task held by a worker, and the worker's end of the takeover (store calls, as worker/loop.py
    # makes them through the control channel) run by hand once the action is queued
    task_id = paused_task(client, store)

    def worker() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            taken = store.takeover.take(task_id)
            if taken:
                request = taken[0]
                event = {"type": "step", "task_id": task_id, "step": 1, "actions": [request["action"]],
                         "results": [{"ok": True, "x": 200, "y": 150}], "human": True,
                         "request_id": request["id"], "url": "http://example.test/", "screenshot": {"step": 1}}
                store.record_step(task_id, 1, b"\xff\xd8jpeg", {"steps_taken": 1}, event, holder="w-test")
                return
            time.sleep(0.02)

    thread = threading.Thread(target=worker)
    thread.start()
    resp = client.post(f"/agent/tasks/{task_id}/actions", json=CLICK, headers=AUTH)
    thread.join()
    # Then the call answers with the step, its result and the signed URL of the screenshot after it
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["step"] == 1 and body["result"] == {"ok": True, "x": 200, "y": 150}
    assert body["status"] == "paused" and body["url"] == "http://example.test/"
    shot = urllib.parse.urlsplit(body["screenshot_url"])
    assert client.get(f"{shot.path}?{shot.query}").data == b"\xff\xd8jpeg"  # no key: the URL is signed


def test_a_share_link_opens_the_task_read_only_until_it_expires(client: FlaskClient, store: TaskStore) -> None:
    task_id = start(client)
    # When the owner shares the task for 2 s
    resp = client.post(f"/agent/tasks/{task_id}/share", json={"expires_in": 2}, headers=AUTH)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    link = urllib.parse.urlsplit(resp.get_json()["url"])
    assert link.path == f"/console/tasks/{task_id}" and re.fullmatch(r"expires=\d+&sig=[\w-]{43}", link.query)
    assert resp.get_json()["expires_at"] == int(urllib.parse.parse_qs(link.query)["expires"][0])
    # Then without a key the page, the record and the events open
    page = client.get(f"{link.path}?{link.query}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b'data-shared="true"' in page.data and b'id="pause"' not in page.data  # no controls
    assert client.get(f"/agent/tasks/{task_id}?{link.query}").get_json()["task_id"] == task_id
    events = client.get(f"/agent/tasks/{task_id}/events?{link.query}")
    assert events.status_code == 200 and events.mimetype == "text/event-stream"
    events.close()
    # but nothing else: no control call, no other task, no list
    assert error_of(client.post(f"/agent/tasks/{task_id}/pause?{link.query}"), 401)
    assert error_of(client.get(f"/agent/tasks?{link.query}"), 401)
    other = start(client)
    assert error_of(client.get(f"/agent/tasks/{other}?{link.query}"), 403)
    assert client.get(f"/console/tasks/{other}?{link.query}").status_code == 403
    # and a tampered link opens nothing
    tampered = link.query[:-1] + ("A" if link.query[-1] != "A" else "B")
    assert error_of(client.get(f"/agent/tasks/{task_id}?{tampered}"), 403)
    # and once it has expired, the page says so with a 403 (polled: the expiry is a wall-clock second)
    deadline = time.monotonic() + 30
    while client.get(f"/agent/tasks/{task_id}?{link.query}").status_code == 200:
        assert time.monotonic() < deadline, "the link never expired"
        time.sleep(0.2)
    expired = client.get(f"{link.path}?{link.query}")
    assert expired.status_code == 403 and b"expired" in expired.data


@pytest.mark.parametrize("body", [{"expires_in": 0}, {"expires_in": 10**9}, {"expires_in": "60"},
                                  {"expires_in": 1.5}])
def test_a_bad_expires_in_is_a_422_naming_it(client: FlaskClient, body: dict[str, Any]) -> None:
    task_id = start(client)
    error = error_of(client.post(f"/agent/tasks/{task_id}/share", json=body, headers=AUTH), 422)
    assert "expires_in" in error["fields"]


def test_a_share_link_without_a_body_lasts_the_default_and_a_malformed_one_is_a_422(client: FlaskClient,
                                                                                    settings: Settings) -> None:
    task_id = start(client)
    resp = client.post(f"/agent/tasks/{task_id}/share", headers=AUTH)
    assert resp.status_code == 200
    assert resp.get_json()["expires_at"] - time.time() == pytest.approx(settings.share_ttl, abs=5)
    assert client.get(f"/console/tasks/{task_id}?expires=soon&sig=x").status_code == 422


def test_a_replay_cannot_be_taken_over(client: FlaskClient, store: TaskStore) -> None:
    # Given an ended recording and its replay, claimed and paused
    from shared.states import ExitCode

    source = start(client)
    store.claim(source, "w-test")
    assert store.finish(source, ExitCode.COMPLETED, result="ok", fields={"steps_taken": 2}).ok
    replay = start(client, instruction="replay", replay_of=source)
    assert store.claim(replay, "w-test")[0] == "started"
    assert client.post(f"/agent/tasks/{replay}/pause", headers=AUTH).get_json() == {"status": "paused"}
    # Then a user's action is a 409 (each replayed step is checked against the recording) and nothing is queued
    resp = client.post(f"/agent/tasks/{replay}/actions", json=CLICK, headers=AUTH)
    assert "replay" in error_of(resp, 409)["message"] and resp.headers["x-should-retry"] == "false"
    assert store.takeover.take(replay) == []


def test_screenshot_urls_seen_through_a_share_link_expire_with_it(client: FlaskClient, store: TaskStore,
                                                                   settings: Settings) -> None:
    # Given a running task shared for 2 minutes (URLs last an hour: url_ttl), followed by two event streams, one
    # through the link and one with the key (each in a thread: a stream of a running task stays open)
    task_id = start(client)
    store.claim(task_id, "w-test")
    link = urllib.parse.urlsplit(client.post(f"/agent/tasks/{task_id}/share", json={"expires_in": 120},
                                             headers=AUTH).get_json()["url"])
    share_expires = int(urllib.parse.parse_qs(link.query)["expires"][0])
    hub = app_state(client.application).events
    streamed: dict[str, str] = {}

    def follow(name: str, query: str, headers: dict[str, str]) -> None:
        resp = client.get(f"/agent/tasks/{task_id}/events?{query}", headers=headers)
        try:
            for chunk in resp.response:  # until the step event, or the end event the test sends at its end
                match = re.search(rb'"screenshot_url":"([^"]+)"', chunk)
                if match:
                    streamed[name] = match.group(1).decode()
                    return
                if b'"type":"end"' in chunk:
                    return
        finally:
            resp.close()

    readers = [threading.Thread(target=follow, args=("keyed", "", AUTH), daemon=True),
               threading.Thread(target=follow, args=("shared", link.query, {}), daemon=True)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30
    while hub.subscribers < 2:
        assert time.monotonic() < deadline, "the streams did not join"
        time.sleep(0.02)
    # When a step with a screenshot arrives: one delivery in the process for both streams (its rendering memoized)
    event = {"type": "step", "task_id": task_id, "step": 1, "actions": [], "results": [],
             "url": "http://example.test/", "screenshot": {"step": 1}}
    store.record_step(task_id, 1, b"\xff\xd8jpeg", {"steps_taken": 1}, event, holder="w-test")
    for reader in readers:
        reader.join(30)
    store.finish(task_id, ExitCode.COMPLETED)  # frees a reader that is still waiting (the test then fails below)
    shared_record = client.get(f"/agent/tasks/{task_id}?{link.query}").get_json()
    keyed_record = client.get(f"/agent/tasks/{task_id}", headers=AUTH).get_json()

    def expiry_of(url: str) -> int:
        return int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["expires"][0])

    # Then what the link shows expires with it, and what the key shows lasts url_ttl
    assert set(streamed) == {"keyed", "shared"}, streamed
    assert expiry_of(shared_record["last_screenshot_url"]) == share_expires
    assert expiry_of(streamed["shared"]) == share_expires
    for url in (keyed_record["last_screenshot_url"], streamed["keyed"]):
        assert expiry_of(url) >= time.time() + settings.url_ttl - 60 > share_expires
    # and the capped URL still opens the screenshot without a key
    shot = urllib.parse.urlsplit(streamed["shared"])
    assert client.get(f"{shot.path}?{shot.query}").data == b"\xff\xd8jpeg"
