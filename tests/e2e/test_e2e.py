"""End to end through the official tzafon SDK: API (gunicorn) -> Redis/Celery -> worker -> real Chromium -> events."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import urllib.parse
from typing import Any

import pytest
import requests
import tzafon
from PIL import Image

from tests.conftest import LiveStack, Receiver, Site

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]


def waits(n: int, seconds: float = 0.2) -> str:
    return "\n".join(f"wait {seconds}" for _ in range(n))


def events_of(live: LiveStack, task_id: str, after: int = 0, key: str | None = None) -> list[dict[str, Any]]:
    """Read the task's SSE stream (it closes after the end event) and parse it like an SSE client."""
    resp = live.http(key or live.key).get(f"{live.base_url}/agent/tasks/{task_id}/events",
                                          headers={"Last-Event-ID": str(after)}, stream=True, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events, ids, data = [], [], []
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("id: "):
            ids.append(int(line[4:]))
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            events.append(json.loads("\n".join(data)))
            data = []
    assert [e["seq"] for e in events] == ids
    return events


def test_start_runs_a_scripted_task_that_fills_a_real_form(sdk: Any, live: LiveStack, site: Site) -> None:
    # Given a script that fills the sign-up form
    script = f'''goto {site.url("form.html")}
type "Ada Lovelace" into "Name"
select "Pro" in "Plan"
click "Submit"
expect "Hello Ada Lovelace on Pro"
done "signed up"'''
    # When it is started through the SDK
    started = sdk.agent.tasks.start(instruction=script, agent_type="scripted", kind="browser",
                                    viewport_width=1024, viewport_height=640)
    assert started.status == "queued"
    task = live.wait_ended(started.task_id)
    # Then it completed, the page saw the submission, and the status shows the details
    assert (task["status"], task["exit_code"], task["result"]) == ("completed", 0, "signed up"), task
    assert site.wait_for_hit()["name"] == ["Ada Lovelace"]
    status = sdk.agent.tasks.retrieve_status(started.task_id)
    assert (status.status, status.exit_code) == ("completed", 0)
    assert task["steps_taken"] == 6 and task["max_steps"] == 100 and task["progress"] == 1.0
    assert task["created_at"] <= task["started_at"] <= task["finished_at"]
    shot = live.http().get(task["last_screenshot_url"], timeout=10)
    assert shot.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(shot.content)).size == (1024, 640)


def test_start_stream_yields_every_event_until_the_end(sdk: Any, site: Site) -> None:
    script = f'goto {site.url("counter.html")}\nclick "Add one"\nclick "Add one"\nexpect "Count: 2"\ndone "two"'
    events = list(sdk.agent.tasks.start_stream(instruction=script, agent_type="scripted", screenshot_mode="base64",
                                               viewport_width=800, viewport_height=600))
    types = [e["type"] for e in events]
    assert types[:2] == ["status", "status"] and [e["status"] for e in events[:2]] == ["queued", "running"]
    assert types.count("step") == 5 and types[-1] == "end"
    assert events[-1]["status"] == "completed" and events[-1]["exit_code"] == 0 and events[-1]["result"] == "two"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    step = next(e for e in events if e["type"] == "step" and e["step"] == 2)
    assert step["actions"][0]["type"] == "click" and step["results"][0]["ok"] is True
    assert step["screenshot"].startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(step["screenshot"].split(",", 1)[1])))
    assert image.size == (800, 600)


def test_pause_holds_the_task_and_resume_continues_where_it_stopped(sdk: Any, live: LiveStack, site: Site) -> None:
    started = sdk.agent.tasks.start(instruction=f"goto {site.url('counter.html')}\n{waits(25)}\ndone",
                                    agent_type="scripted")
    live.wait_until(started.task_id, lambda t: t["steps_taken"] >= 3)
    assert sdk.agent.tasks.pause(started.task_id).status == "paused"
    held = live.wait_until(started.task_id, lambda t: t["status"] == "paused")
    time.sleep(0.6)  # a step in flight when the pause arrived may still land
    before = live.http().get(f"{live.base_url}/agent/tasks/{started.task_id}").json()["steps_taken"]
    time.sleep(1.5)  # at 0.2 s a step, ~7 steps would run here if the pause did not hold
    during = live.http().get(f"{live.base_url}/agent/tasks/{started.task_id}").json()
    assert during["status"] == "paused" and during["steps_taken"] == before, (held, during)
    assert sdk.agent.tasks.resume(started.task_id).status == "running"
    task = live.wait_ended(started.task_id)
    assert task["status"] == "completed" and task["steps_taken"] == 27
    steps = [e["step"] for e in events_of(live, started.task_id) if e["type"] == "step"]
    assert steps == list(range(1, 28))  # every line ran once, in order, in the same browser


def test_inject_message_reaches_the_agent_history(sdk: Any, live: LiveStack, site: Site) -> None:
    started = sdk.agent.tasks.start(instruction=waits(15), agent_type="scripted")
    live.wait_until(started.task_id, lambda t: t["steps_taken"] >= 2)
    assert sdk.agent.tasks.inject_message(started.task_id, message="also check the footer").status == "running"
    live.wait_ended(started.task_id)
    events = events_of(live, started.task_id)
    injected = [e for e in events if e["type"] == "message"]
    assert injected and injected[0]["content"] == "also check the footer"
    delivered = [e for e in events if e["type"] == "step" and e["messages"]]
    assert len(delivered) == 1 and delivered[0]["messages"] == ["also check the footer"]
    assert delivered[0]["seq"] > injected[0]["seq"]


def test_sdk_raises_its_exceptions_for_401_404_409(sdk: Any, live: LiveStack) -> None:
    from tzafon import Lightcone

    with pytest.raises(tzafon.AuthenticationError):
        Lightcone(base_url=live.base_url, api_key="wrong", max_retries=0).agent.tasks.retrieve_status("task_x")
    with pytest.raises(tzafon.NotFoundError):
        sdk.agent.tasks.retrieve_status("task_does_not_exist")
    done = sdk.agent.tasks.start(instruction='done "ok"', agent_type="scripted")
    live.wait_ended(done.task_id)
    with pytest.raises(tzafon.ConflictError):
        sdk.agent.tasks.pause(done.task_id)
    with pytest.raises(tzafon.ConflictError):
        sdk.agent.tasks.inject_message(done.task_id, message="too late")
    resp = live.http().post(f"{live.base_url}/agent/tasks/{done.task_id}/resume")
    assert resp.status_code == 409 and resp.headers["x-should-retry"] == "false"
    assert resp.json()["error"]["message"] == "cannot resume a task that is completed"


def test_cancel_stops_a_running_task_before_its_next_action(sdk: Any, live: LiveStack) -> None:
    started = sdk.agent.tasks.start(instruction=waits(50), agent_type="scripted")
    live.wait_until(started.task_id, lambda t: t["steps_taken"] >= 2)
    resp = live.http().post(f"{live.base_url}/agent/tasks/{started.task_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    task = live.wait_ended(started.task_id)
    assert (task["status"], task["exit_code"]) == ("cancelled", 4)
    time.sleep(0.8)
    after = live.http().get(f"{live.base_url}/agent/tasks/{started.task_id}").json()
    assert after["steps_taken"] <= task["steps_taken"] + 1  # at most the step in flight landed
    events = events_of(live, started.task_id)
    assert events[-1]["type"] == "end" and events[-1]["exit_code"] == 4


@pytest.mark.parametrize(
    ("body", "status", "exit_code", "error_part"),
    [
        ({"instruction": waits(10, 0.05), "max_steps": 3}, "failed", 2, "max_steps (3)"),
        ({"instruction": "wait 0.1\nclik \"Go\"\ndone"}, "failed", 1, "line 2"),
        ({"instruction": waits(40, 0.1), "max_duration_seconds": 1}, "timed_out", 3, "max_duration"),
        ({"instruction": 'fail "cannot find the invoice"'}, "failed", 1, "cannot find the invoice"),
        ({"instruction": 'click "No such button"'}, "failed", 1, "No such button"),
    ],
    ids=["max-steps", "bad-script-line", "max-duration", "agent-gives-up", "element-not-found"],
)
def test_each_exit_has_its_status_and_code(live: LiveStack, site: Site, body: dict[str, Any], status: str,
                                           exit_code: int, error_part: str) -> None:
    if body["instruction"].startswith("click"):
        body = {**body, "start_url": site.url("form.html")}
    resp = live.http().post(f"{live.base_url}/agent/tasks", json={"agent_type": "scripted", **body})
    task = live.wait_ended(resp.json()["task_id"])
    assert (task["status"], task["exit_code"]) == (status, exit_code), task
    assert error_part in task["error"]


def test_browser_cannot_reach_private_addresses_not_allowed(live: LiveStack) -> None:
    from lodestar.stack import free_port

    resp = live.http().post(f"{live.base_url}/agent/tasks", json={
        "agent_type": "scripted", "instruction": f"goto http://127.0.0.1:{free_port()}/admin\ndone"})
    task = live.wait_ended(resp.json()["task_id"])
    assert task["status"] == "failed" and "private address" in task["error"], task


def test_a_redirect_to_a_private_address_is_refused_before_it_is_seen(live: LiveStack, site: Site,
                                                                     receiver: Receiver) -> None:
    # Given an allowed page that redirects to a loopback server the browser may not reach
    target = urllib.parse.quote(f"{receiver.url}/internal-admin", safe="")
    resp = live.http().post(f"{live.base_url}/agent/tasks", json={
        "agent_type": "scripted", "instruction": f"goto {site.url('__redirect')}?to={target}\ndone"})
    task = live.wait_ended(resp.json()["task_id"])
    # Then the landing page is refused and the task fails naming it
    assert task["status"] == "failed" and "refused" in task["error"] and "internal-admin" in task["error"], task


def test_events_replay_from_last_event_id(live: LiveStack) -> None:
    resp = live.http().post(f"{live.base_url}/agent/tasks",
                            json={"agent_type": "scripted", "instruction": waits(3, 0.05) + '\ndone "x"'})
    task_id = resp.json()["task_id"]
    live.wait_ended(task_id)
    everything = events_of(live, task_id)
    tail = events_of(live, task_id, after=3)
    assert [e["seq"] for e in tail] == [e["seq"] for e in everything][3:]
    assert tail[-1]["type"] == "end"


def test_tenants_cannot_see_each_others_tasks(live: LiveStack) -> None:
    resp = live.http().post(f"{live.base_url}/agent/tasks", json={"agent_type": "scripted", "instruction": "done"})
    task_id = resp.json()["task_id"]
    task = live.wait_ended(task_id)
    other = live.http(live.other_key)
    base = f"{live.base_url}/agent/tasks/{task_id}"
    for method, url in [("get", base), ("get", base + "/events"), ("get", base + "/screenshots/1"),
                        ("post", base + "/pause"), ("post", base + "/cancel"), ("post", base + "/resume")]:
        assert getattr(other, method)(url, timeout=10).status_code == 404, url
    assert other.post(base + "/messages", json={"message": "hi"}).status_code == 404
    assert live.http().get(base + "/screenshots/1").status_code == 200 and task["status"] == "completed"
    assert requests.get(base, timeout=10).status_code == 401


def test_idempotency_key_returns_the_existing_task(live: LiveStack) -> None:
    body = {"agent_type": "scripted", "instruction": "done", "idempotency_key": f"order-{time.time_ns()}"}
    first = live.http().post(f"{live.base_url}/agent/tasks", json=body).json()
    again = live.http().post(f"{live.base_url}/agent/tasks", json=body).json()
    assert first["reused"] is False and again["reused"] is True and again["task_id"] == first["task_id"]
    other_tenant = live.http(live.other_key).post(f"{live.base_url}/agent/tasks", json=body).json()
    assert other_tenant["task_id"] != first["task_id"]


def test_websocket_streams_the_same_events_until_the_end(live: LiveStack) -> None:
    import simple_websocket

    resp = live.http().post(f"{live.base_url}/agent/tasks",
                            json={"agent_type": "scripted", "instruction": 'wait 0.1\ndone "ws"'})
    task_id = resp.json()["task_id"]
    ws_url = live.base_url.replace("http://", "ws://") + f"/agent/tasks/{task_id}/ws"
    ws = simple_websocket.Client.connect(ws_url, headers={"Authorization": f"Bearer {live.key}"})
    events = []
    try:
        while True:
            message = ws.receive(timeout=30)
            assert message is not None, events
            events.append(json.loads(message))
            if events[-1]["type"] == "end":
                break
    finally:
        with contextlib.suppress(simple_websocket.ConnectionClosed):
            ws.close()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["status"] == "completed" and events[-1]["result"] == "ws"
    def path_only(e: dict[str, Any]) -> dict[str, Any]:  # screenshot URLs use the client's Host header
        return {k: urllib.parse.urlsplit(v).path if k == "screenshot_url" else v for k, v in e.items()}

    assert [path_only(e) for e in events] == [path_only(e) for e in events_of(live, task_id)]
    # another tenant's task: the socket is closed with a policy-violation code, nothing is streamed
    other = simple_websocket.Client.connect(ws_url, headers={"Authorization": f"Bearer {live.other_key}"})
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        other.receive(timeout=10)
    # 1008 (policy violation) when the close frame is read before the connection is torn down, else 1005
    assert closed.value.reason in (1008, 1005)
    with pytest.raises(simple_websocket.ConnectionError) as refused:  # no key: 401 before the upgrade
        simple_websocket.Client.connect(ws_url)
    assert refused.value.status_code == 401
