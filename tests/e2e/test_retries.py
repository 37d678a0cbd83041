"""Retries are safe (issue 11): the official tzafon SDK retries a control call whose answer was lost, and the
retry finds the task already where it asked; a message retried with the same ``Idempotency-Key`` arrives once.

The answer is lost for real: the request reaches the live API and is carried out, then the transport drops the
response and raises a connection error, which the SDK retries (its own retry loop, same headers)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveStack, Site
from tests.e2e.test_e2e import events_of

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]


class LosesAnswers(httpx.HTTPTransport):
    """Sends each request, then loses the answer of the first ``lose`` POSTs (as a dropped connection would)."""

    def __init__(self, lose: int):
        super().__init__()
        self.lose = lose
        self.sent: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.sent.append((request.method, request.url.path))
        if request.method == "POST" and self.lose > 0:
            self.lose -= 1
            response.read()
            response.close()
            raise httpx.ReadError("connection lost before the answer arrived", request=request)
        return response


def retrying_sdk(live: LiveStack, lose: int) -> tuple[Any, LosesAnswers]:
    """A tzafon client with its default retries, whose transport loses the first ``lose`` POST answers."""
    from tzafon import Lightcone

    transport = LosesAnswers(lose)
    client = Lightcone(base_url=live.base_url, api_key=live.key, max_retries=2,
                       http_client=httpx.Client(transport=transport, timeout=30))
    return client, transport


def long_task(sdk: Any, site: Site) -> str:
    """A scripted task that runs for a while (a page, then 0.2 s waits), started and seen running."""
    waits = "\n".join("wait 0.2" for _ in range(100))
    return str(sdk.agent.tasks.start(instruction=f"goto {site.url('counter.html')}\n{waits}\ndone",
                                     agent_type="scripted").task_id)


def test_a_retried_pause_resume_and_cancel_reach_their_state_without_an_error(sdk: Any, live: LiveStack,
                                                                              site: Site) -> None:
    # Given a running task
    task_id = long_task(sdk, site)
    live.wait_until(task_id, lambda t: t["steps_taken"] >= 1)
    for verb, status in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        # When the call's first answer is lost and the SDK retries it
        client, transport = retrying_sdk(live, lose=1)
        answer = getattr(client.agent.tasks, verb)(task_id) if verb != "cancel" else client.post(
            f"/agent/tasks/{task_id}/cancel", cast_to=httpx.Response).json()
        # Then the call was sent twice and the retry answers the state reached, with no ConflictError
        assert transport.sent.count(("POST", f"/agent/tasks/{task_id}/{verb}")) == 2
        assert (answer["status"] if isinstance(answer, dict) else answer.status) == status
        live.wait_until(task_id, lambda t, s=status: t["status"] == s)
    # And the task ended cancelled (exit code 4): each command took effect once
    task = live.wait_ended(task_id)
    assert (task["status"], task["exit_code"]) == ("cancelled", 4)


def test_a_retried_message_with_an_idempotency_key_is_delivered_once(sdk: Any, live: LiveStack, site: Site) -> None:
    # Given a running task
    task_id = long_task(sdk, site)
    steps = live.wait_until(task_id, lambda t: t["steps_taken"] >= 1)["steps_taken"]
    # When a message is injected with an Idempotency-Key and its first answer is lost, so the SDK sends it again
    client, transport = retrying_sdk(live, lose=1)
    answer = client.agent.tasks.inject_message(task_id, message="also check the footer",
                                               extra_headers={"Idempotency-Key": "footer-1"})
    assert answer.status == "running"
    assert transport.sent.count(("POST", f"/agent/tasks/{task_id}/messages")) == 2
    # Then, once the agent has taken two more steps (the message reaches it at its next one), it has received the
    # message once: one message event, one step that delivered it
    live.wait_until(task_id, lambda t: t["steps_taken"] >= steps + 2)
    assert live.http().post(f"{live.base_url}/agent/tasks/{task_id}/cancel").status_code == 200
    live.wait_ended(task_id)
    events = events_of(live, task_id)
    assert [e["content"] for e in events if e["type"] == "message"] == ["also check the footer"]
    delivered = [m for e in events if e["type"] == "step" for m in e.get("messages") or []]
    assert delivered == ["also check the footer"]
