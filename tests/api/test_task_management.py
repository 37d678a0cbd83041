"""Task management for job-queue users: list, wait, cancel, batch, webhooks, tenants, limits (issue 5).

Tests without a worker use the app's test client on a real Redis (tasks stay queued); the others use the live
stack (gunicorn API + Celery worker + Chromium) from conftest.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from api import create_app
from shared.queue import RunTaskMessages, enqueue, make_celery
from shared.settings import Settings
from shared.store import TaskStore
from shared.tenants import env_tenant
from shared.webhooks import verify
from tests.conftest import KEY, OTHER_KEY, LiveStack, Receiver, app_state

AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


def task(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"agent_type": "scripted", "instruction": f'done "{i}"', **extra}


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    yield create_app(test_config=settings).test_client()


# --- batch and list (no worker: everything stays queued) ---------------------------------------------------------
@pytest.mark.redis
def test_batch_of_2000_with_10_invalid_items_accepts_the_rest(client: FlaskClient, settings: Settings) -> None:
    bad = {7: {"max_steps": 0}, 100: {"kind": "spaceship"}, 250: {"temperature": 9}, 999: {"instruction": ""},
           1200: {"viewport_width": 5}, 1300: {"priority": "urgent"}, 1500: {"start_url": "ftp://x"},
           1700: {"metadata": {"a": 1}}, 1800: {"screenshot_mode": "png"}, 1999: {"max_duration_seconds": -1}}
    items = [task(i, **{"metadata": {"customer": f"c{i % 4}"}, **bad.get(i, {})}) for i in range(2000)]
    body = "\n".join(json.dumps(i) for i in items)
    resp = client.post("/agent/tasks/batch", data=body, headers={**AUTH, "Content-Type": "application/x-ndjson"})
    assert resp.status_code == 200
    result = resp.get_json()
    assert result["accepted"] == 1990 and result["rejected"] == 10
    assert sorted(e["index"] for e in result["errors"]) == sorted(bad)
    error_fields = {e["index"]: set(e["error"]["fields"]) for e in result["errors"]}
    assert error_fields[7] == {"max_steps"} and error_fields[1700] == {"metadata"}
    # every accepted task is stored, indexed, and has exactly one Celery message on the broker
    store = TaskStore.from_settings(settings)
    assert store.count(env_tenant(KEY), "queued") == 1990
    assert store.redis.llen("browser:4") == 1990
    summary = client.get(f"/agent/batches/{result['batch_id']}", headers=AUTH).get_json()
    assert summary["total"] == 1990 and summary["counts"]["queued"] == 1990 and not summary["done"]
    assert client.get(f"/agent/batches/{result['batch_id']}", headers=OTHER).status_code == 404


@pytest.mark.redis
@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_the_api_writes_the_same_message_celery_send_task_would(settings: Settings, priority: str) -> None:
    app = make_celery(settings)
    client = TaskStore.from_settings(settings).redis
    enqueue(app, "task_abcdefghijklmnopqrstuv", "desktop", priority)
    ((key, pushed),) = [(k, client.lpop(k)) for k in client.keys("desktop*")]
    ours_key, ours = RunTaskMessages(app).message("task_abcdefghijklmnopqrstuv", "desktop", priority)
    theirs, mine = json.loads(pushed), json.loads(ours)
    assert theirs["properties"].pop("delivery_tag") != mine["properties"].pop("delivery_tag")  # fresh per message
    assert (ours_key, mine) == (key.decode(), theirs)
    assert json.loads(base64.b64decode(mine["body"]))[0] == ["task_abcdefghijklmnopqrstuv"]


@pytest.mark.redis
def test_a_batch_that_loses_redis_midway_keeps_what_was_stored_and_reports_the_rest(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(test_config=settings)
    client = app.test_client()
    messages = app_state(app).dispatcher.messages
    real, calls = messages.message, {"n": 0}

    def fail_after_1500(*args: Any) -> Any:  # Redis goes away while the second chunk of 1000 is being built
        calls["n"] += 1
        if calls["n"] > 1500:
            raise redis.ConnectionError("Redis went away")
        return real(*args)

    monkeypatch.setattr(messages, "message", fail_after_1500)
    items = [task(i, idempotency_key=f"k{i}") for i in range(2500)]
    resp = client.post("/agent/tasks/batch", json=items, headers=AUTH)
    assert resp.status_code == 200
    result = resp.get_json()
    assert result["accepted"] == 1000 and result["rejected"] == 1500
    assert {e["error"]["type"] for e in result["errors"]} == {"queue_unavailable"}
    store = TaskStore.from_settings(settings)
    assert store.count(env_tenant(KEY), "queued") == 1000 and store.redis.llen("browser:4") == 1000
    # the tasks that were not stored can be resubmitted with the same idempotency keys
    monkeypatch.setattr(messages, "message", real)
    again = client.post("/agent/tasks/batch", json=items, headers=AUTH).get_json()
    assert again["accepted"] == 2500 and sum(1 for t in again["tasks"] if t.get("reused")) == 1000
    assert store.count(env_tenant(KEY), "queued") == 2500 and store.redis.llen("browser:4") == 2500
    # and a single submit that cannot be stored answers 503 and leaves nothing behind
    monkeypatch.setattr(messages, "message", fail_after_1500)
    resp = client.post("/agent/tasks", json=task(), headers=AUTH)
    assert resp.status_code == 503 and resp.get_json()["error"]["type"] == "queue_unavailable"
    assert store.count(env_tenant(KEY), "queued") == 2500


@pytest.mark.redis
def test_a_submit_whose_reply_is_lost_after_exec_is_not_stored_twice(
        client: FlaskClient, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    real = redis.client.Pipeline.execute
    lost = {"n": 0}

    def execute_then_lose_the_reply(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        if self.transaction and not lost["n"]:
            lost["n"] += 1
            raise redis.ConnectionError("connection reset after EXEC")
        return result

    client.post("/agent/tasks", json=task(), headers=AUTH)  # Celery builds the message template (its own I/O)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute_then_lose_the_reply)
    resp = client.post("/agent/tasks", json=task(idempotency_key="once"), headers=AUTH)
    assert resp.status_code == 200, resp.get_json()  # the chunk was found stored: accepted, not a 503
    again = client.post("/agent/tasks", json=task(idempotency_key="once"), headers=AUTH).get_json()
    assert again["reused"] and again["task_id"] == resp.get_json()["task_id"]
    store = TaskStore.from_settings(settings)
    assert lost["n"] == 1
    assert store.count(env_tenant(KEY), "queued") == 2 and store.redis.llen("browser:4") == 2


@pytest.mark.redis
def test_an_idempotency_key_is_one_task_within_a_batch_and_while_its_first_request_is_storing(
        client: FlaskClient, settings: Settings) -> None:
    result = client.post("/agent/tasks/batch", json=[task(1, idempotency_key="same"), task(2),
                                                     task(3, idempotency_key="same")], headers=AUTH).get_json()
    assert result["accepted"] == 3
    first, _, third = sorted(result["tasks"], key=lambda t: t["index"])
    assert third["task_id"] == first["task_id"] and third["reused"]
    store = TaskStore.from_settings(settings)
    assert store.count(env_tenant(KEY), "queued") == 2
    # a key used before, twice in a later batch: both items are the earlier task
    later = client.post("/agent/tasks/batch", json=[task(4, idempotency_key="same"),
                                                    task(5, idempotency_key="same")], headers=AUTH).get_json()
    assert [(t["task_id"], t["reused"]) for t in later["tasks"]] == [(first["task_id"], True)] * 2
    assert store.count(env_tenant(KEY), "queued") == 2
    # a key claimed a moment ago by a request that has not stored its task yet
    slot = store.keys.idempotency(env_tenant(KEY), "busy")
    store.redis.set(slot, "task_stillbeingwritten000000", ex=settings.idempotency_window)
    resp = client.post("/agent/tasks", json=task(idempotency_key="busy"), headers=AUTH)
    assert resp.status_code == 409 and resp.get_json()["error"]["type"] == "idempotency_key_in_use"
    assert resp.headers["retry-after"] == "1"
    batch = client.post("/agent/tasks/batch", json=[task(idempotency_key="busy"), task()], headers=AUTH).get_json()
    assert batch["accepted"] == 1 and batch["errors"][0]["error"]["type"] == "idempotency_key_in_use"
    # once the claim is older than the grace period, a missing task means it expired: the key is free again
    store.redis.set(slot, "task_stillbeingwritten000000", ex=settings.idempotency_window - 61)
    again = client.post("/agent/tasks", json=task(idempotency_key="busy"), headers=AUTH)
    assert again.status_code == 200 and not again.get_json()["reused"]


@pytest.mark.redis
def test_list_filters_and_paginates_thousands_of_tasks(client: FlaskClient) -> None:
    items = [task(i, kind="browser", model="m-even" if i % 2 == 0 else "m-odd",
                  metadata={"customer": f"c{i % 3}", "run": "r1"}) for i in range(3000)]
    first = client.post("/agent/tasks/batch", json=items[:1500], headers=AUTH).get_json()
    second = client.post("/agent/tasks/batch", json={"tasks": items[1500:]}, headers=AUTH).get_json()
    assert first["accepted"] == second["accepted"] == 1500
    created = [t["task_id"] for t in first["tasks"] + second["tasks"]]
    client.post("/agent/tasks", json=task(), headers=OTHER)  # another tenant's task never shows up

    def all_pages(query: str, limit: int) -> list[dict[str, Any]]:
        out, cursor = [], None
        while True:
            url = f"/agent/tasks?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(url, headers=AUTH).get_json()
            out += page["data"]
            cursor = page["next_cursor"]
            assert page["has_more"] == (cursor is not None)
            if cursor is None:
                return out

    everything = all_pages("", 500)
    assert len(everything) == 3000 and {t["task_id"] for t in everything} == set(created)
    stamps = [t["created_at"] for t in everything]  # ISO 8601 at ms: ties within a ms may come in any order
    assert stamps == sorted(stamps, reverse=True)  # newest first; the set check above rules out duplicates
    c1 = all_pages("&metadata.customer=c1", 97)
    assert len(c1) == 1000 and all(t["metadata"]["customer"] == "c1" for t in c1)
    combo = all_pages("&metadata.customer=c1&model=m-even", 100)
    assert len(combo) == sum(1 for i in range(3000) if i % 3 == 1 and i % 2 == 0)
    # bulk cancel by filter, then the status filter finds exactly those
    cancelled = client.post("/agent/tasks/cancel", json={"filter": {"metadata": {"customer": "c2"}}},
                            headers=AUTH).get_json()
    assert len(cancelled["cancelled"]) == 1000 and cancelled["skipped"] == []
    by_status = all_pages("&status=cancelled", 250)
    assert {t["task_id"] for t in by_status} == set(cancelled["cancelled"])
    assert all(t["exit_code"] == 4 for t in by_status)
    assert len(all_pages("&status=queued,cancelled", 500)) == 3000
    cutoff = everything[1000]["created_at"]
    newer = all_pages(f"&created_after={cutoff}", 500)
    assert all(t["created_at"] >= cutoff for t in newer) and 999 <= len(newer) < 3000
    assert client.get("/agent/tasks?status=sleeping", headers=AUTH).status_code == 422
    assert client.get("/agent/tasks?limit=0", headers=AUTH).status_code == 422
    assert client.get("/agent/tasks?cursor=%%%", headers=AUTH).status_code == 422


@pytest.mark.redis
def test_cancel_a_queued_task_and_bulk_cancel_by_ids(client: FlaskClient) -> None:
    ids = [client.post("/agent/tasks", json=task(i), headers=AUTH).get_json()["task_id"] for i in range(3)]
    other = client.post("/agent/tasks", json=task(), headers=OTHER).get_json()["task_id"]
    single = client.post(f"/agent/tasks/{ids[0]}/cancel", headers=AUTH)
    assert single.status_code == 200 and single.get_json()["status"] == "cancelled"
    result = client.post("/agent/tasks/cancel", json={"task_ids": [*ids, other, "task_nope"]}, headers=AUTH).get_json()
    assert result["cancelled"] == ids[1:]
    assert {s["task_id"]: s["reason"] for s in result["skipped"]} == {
        ids[0]: "already cancelled", other: "not_found", "task_nope": "not_found"}
    assert client.get(f"/agent/tasks/{other}", headers=OTHER).get_json()["status"] == "queued"


@pytest.mark.redis
def test_max_queued_limit_answers_429_with_retry_after(client: FlaskClient, settings: Settings) -> None:
    tenants = TaskStore.from_settings(settings).tenants
    key, principal = tenants.create_key("limited", max_queued=3)
    auth = {"Authorization": f"Bearer {key}"}
    assert [client.post("/agent/tasks", json=task(), headers=auth).status_code for _ in range(3)] == [200] * 3
    refused = client.post("/agent/tasks", json=task(), headers=auth)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
    assert client.post("/agent/tasks/batch", json=[task(), task()], headers=auth).status_code == 429
    assert client.post("/agent/tasks", json=task(), headers=AUTH).status_code == 200  # other tenants unaffected
    info = client.get("/agent/tenant", headers=auth).get_json()
    assert info["tenant"] == principal.tenant and info["counts"]["queued"] == 3
    assert info["webhook_secret"].startswith("whsec_")


@pytest.mark.redis
def test_rate_limit_per_tenant(client: FlaskClient, settings: Settings) -> None:
    key, _ = TaskStore.from_settings(settings).tenants.create_key("chatty", rate_limit="5/minute")
    auth = {"Authorization": f"Bearer {key}"}
    codes = [client.get("/agent/tasks?limit=1", headers=auth).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    limited = client.get("/agent/tasks?limit=1", headers=auth)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert limited.get_json()["error"]["type"] == "too_many_requests"
    assert client.get("/agent/tasks?limit=1", headers=AUTH).status_code == 200


@pytest.mark.redis
def test_a_rate_limit_that_is_not_rate_limit_notation_is_refused(settings: Settings) -> None:
    store = TaskStore.from_settings(settings)
    tenants = store.tenants
    with pytest.raises(ValueError, match="rate limit 'lots'"):
        tenants.create_key("bad", rate_limit="lots")
    key, principal = tenants.create_key("good", rate_limit="10/second")
    with pytest.raises(ValueError, match="per fortnight"):
        tenants.set_limits(principal.tenant, rate_limit="3 per fortnight")
    # one stored before specs were checked is ignored (logged), not a 500 on every request
    store.redis.hset(store.keys.tenant(principal.tenant), "rate_limit", "lots")
    client = create_app(test_config=settings).test_client()
    assert client.get("/agent/tasks?limit=1", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with pytest.raises(ValueError, match="LODESTAR_DEFAULT_RATE_LIMIT"):
        create_app(test_config=dataclasses.replace(settings, default_rate_limit="plenty"))


@pytest.mark.redis
def test_stored_keys_are_hashed_and_revocable(client: FlaskClient, settings: Settings) -> None:
    app = create_app(test_config=settings)
    store = app_state(app).store
    tenants = store.tenants
    tenants.cache_seconds = 0
    key, principal = tenants.create_key("ci")
    assert not any(key.encode() in store.redis.dump(k) or b"" for k in store.redis.keys("*apikey*"))
    c = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}
    task_id = c.post("/agent/tasks", json=task(), headers=auth).get_json()["task_id"]
    assert c.get(f"/agent/tasks/{task_id}", headers=auth).status_code == 200
    assert c.get(f"/agent/tasks/{task_id}", headers=AUTH).status_code == 404
    assert tenants.revoke(principal.key_id)
    assert c.get(f"/agent/tasks/{task_id}", headers=auth).status_code == 401
    assert [k["revoked"] for k in tenants.list_keys()] == [True]


# --- with the live worker -----------------------------------------------------------------------------------------
@pytest.mark.worker
@pytest.mark.browser
def test_wait_returns_at_the_end_and_at_the_timeout(live: LiveStack) -> None:
    http = live.http()
    quick = http.post(f"{live.base_url}/agent/tasks", json=task(instruction='wait 1\ndone "w"')).json()["task_id"]
    began = time.monotonic()
    ended = http.get(f"{live.base_url}/agent/tasks/{quick}/wait?timeout=60", timeout=90).json()
    assert ended["status"] == "completed" and ended["result"] == "w" and time.monotonic() - began < 30
    slow = http.post(f"{live.base_url}/agent/tasks", json=task(instruction="wait 5\ndone")).json()["task_id"]
    began = time.monotonic()
    pending = http.get(f"{live.base_url}/agent/tasks/{slow}/wait?timeout=0.5", timeout=30).json()
    assert pending["exit_code"] is None and 0.4 < time.monotonic() - began < 5
    assert http.get(f"{live.base_url}/agent/tasks/{slow}/wait?timeout=1000").status_code == 422
    assert live.http(live.other_key).get(f"{live.base_url}/agent/tasks/{slow}/wait").status_code == 404
    http.post(f"{live.base_url}/agent/tasks/{slow}/cancel")


@pytest.mark.worker
@pytest.mark.browser
def test_cancel_a_paused_task(live: LiveStack) -> None:
    http = live.http()
    task_id = http.post(f"{live.base_url}/agent/tasks",
                        json=task(instruction="\n".join(["wait 0.2"] * 30))).json()["task_id"]
    live.wait_until(task_id, lambda t: t["steps_taken"] >= 1)
    assert http.post(f"{live.base_url}/agent/tasks/{task_id}/pause").json()["status"] == "paused"
    assert http.post(f"{live.base_url}/agent/tasks/{task_id}/cancel").json()["status"] == "cancelled"
    done = live.wait_ended(task_id)
    assert (done["status"], done["exit_code"]) == ("cancelled", 4)


@pytest.mark.worker
@pytest.mark.browser
def test_webhook_is_signed_retried_after_two_failures_and_recorded(live: LiveStack, receiver: Receiver) -> None:
    http = live.http()
    receiver.fail_next = 2
    url = f"{receiver.url}/hooks/{time.time_ns()}"
    task_id = http.post(f"{live.base_url}/agent/tasks",
                        json=task(instruction='done "hooked"', webhook_url=url)).json()["task_id"]
    live.wait_ended(task_id)
    path = url.split(receiver.url)[1]
    deadline = time.monotonic() + 40
    while len(receiver.for_path(path)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    calls = receiver.for_path(path)
    assert [c[2] for c in calls] == [500, 500, 204]
    headers, body, _ = calls[-1]
    secret = http.get(f"{live.base_url}/agent/tenant").json()["webhook_secret"]
    assert verify(secret, body, headers["Lodestar-Timestamp"], headers["Lodestar-Signature"])
    assert not verify("whsec_wrong", body, headers["Lodestar-Timestamp"], headers["Lodestar-Signature"])
    payload = json.loads(body)
    assert payload["event"] == "task.completed" and payload["task"]["result"] == "hooked"
    assert len({c[0]["Lodestar-Delivery"] for c in calls}) == 1
    attempts = http.get(f"{live.base_url}/agent/tasks/{task_id}/webhooks").json()["data"]
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in attempts] == [(1, False, 500), (2, False, 500),
                                                                           (3, True, 204)]
    # a redelivery is a new delivery of the same state
    assert http.post(f"{live.base_url}/agent/tasks/{task_id}/webhooks/redeliver").status_code == 202
    deadline = time.monotonic() + 20
    while len(receiver.for_path(path)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert receiver.for_path(path)[-1][0]["Lodestar-Delivery"] != headers["Lodestar-Delivery"]
    assert live.http(live.other_key).get(f"{live.base_url}/agent/tasks/{task_id}/webhooks").status_code == 404


@pytest.mark.worker
@pytest.mark.browser
def test_webhook_to_a_private_address_is_refused(live: LiveStack) -> None:
    from lodestar.stack import free_port

    http = live.http()
    task_id = http.post(f"{live.base_url}/agent/tasks", json=task(
        webhook_url=f"http://127.0.0.1:{free_port()}/internal")).json()["task_id"]
    live.wait_ended(task_id)
    deadline = time.monotonic() + 20
    attempts: list[dict[str, Any]] = []
    while not attempts and time.monotonic() < deadline:
        attempts = http.get(f"{live.base_url}/agent/tasks/{task_id}/webhooks").json()["data"]
        time.sleep(0.2)
    assert len(attempts) == 1 and attempts[0]["error"].startswith("refused") and attempts[0]["ok"] is False


@pytest.mark.worker
@pytest.mark.browser
def test_running_limit_holds_under_a_flood_without_starving_others(live: LiveStack) -> None:
    tenants = TaskStore.from_settings(Settings(redis_url=live.redis_url)).tenants
    key, _ = tenants.create_key("flood", max_running=1)
    flood = live.http(key)
    ids = [flood.post(f"{live.base_url}/agent/tasks", json=task(instruction="wait 0.4\ndone")).json()["task_id"]
           for _ in range(6)]
    time.sleep(0.5)
    other = live.http().post(f"{live.base_url}/agent/tasks", json=task()).json()["task_id"]
    done_other = live.wait_ended(other, timeout=60)
    flood_tasks = [live.wait_ended(i, timeout=120, key=key) for i in ids]
    assert all(t["status"] == "completed" for t in flood_tasks) and done_other["status"] == "completed"
    spans = sorted((t["started_at"], t["finished_at"]) for t in flood_tasks)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans  # never two at once
    assert done_other["finished_at"] < spans[-1][0]  # the other tenant did not wait for the flood


@pytest.mark.worker
@pytest.mark.browser
def test_lodestar_submit_follows_a_batch_to_the_end(live: LiveStack, tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("\n".join(json.dumps(task(i)) for i in range(5)) + "\n" + json.dumps({"kind": "x"}) + "\n")
    result = subprocess.run([sys.executable, "-m", "lodestar.cli", "submit", str(tasks_file), "--url", live.base_url,
                             "--key", live.key], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "accepted 5, rejected 1" in result.stdout, result.stdout + result.stderr
    assert "finished: completed 5" in result.stdout
    assert "task 6:" in result.stdout + result.stderr  # the invalid line is reported
    assert result.returncode == 1  # one task was rejected


@pytest.mark.worker
@pytest.mark.browser
def test_lodestar_tasks_cli_gets_waits_lists_and_cancels(live: LiveStack) -> None:
    def cli(*args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "lodestar.cli", "tasks", "--url", live.base_url, "--key", live.key,
                              *args], capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    http = live.http()
    done_id = http.post(f"{live.base_url}/agent/tasks", json=task(metadata={"cli": "yes"})).json()["task_id"]
    assert json.loads(cli("wait", done_id, "--timeout", "60"))["status"] == "completed"
    assert json.loads(cli("get", done_id))["task_id"] == done_id
    listed = json.loads(cli("list", "--metadata", "cli=yes"))["data"]
    assert [t["task_id"] for t in listed] == [done_id]
    events = [json.loads(line) for line in cli("events", done_id).splitlines()]
    assert events[-1]["type"] == "end" and events[-1]["exit_code"] == 0
    slow = http.post(f"{live.base_url}/agent/tasks", json=task(instruction="wait 10\ndone")).json()["task_id"]
    assert json.loads(cli("cancel", slow))["cancelled"] == [slow]
