"""The egress filter through the whole stack (API -> Redis/Celery -> a real worker process -> Chromium): the
loopback names of the issue are refused with the service never reached, a task's and its tenant's
``allowed_domains`` are enforced, refusals arrive as ``blocked`` events and in step results, and bad patterns are
refused at submit with 422 naming the field.

The worker runs with ``LODESTAR_EGRESS_HOSTS`` mapping ``site-a.test`` and ``site-b.test`` to the test site's
address, and only the site's port allowed (``LODESTAR_BROWSER_ALLOWED_HOSTS=127.0.0.1:<port>``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from shared.tenants import env_tenant
from tests.conftest import LiveStack, Site, start_stack
from tests.e2e.test_e2e import events_of
from tests.listeners import EgressSite, Listener

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]


@pytest.fixture(scope="module")
def egress_site() -> Iterator[EgressSite]:
    s = EgressSite.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stack(redis_base: str, site: Site, egress_site: EgressSite) -> Iterator[LiveStack]:
    """API + one browser worker on database 10, with the egress hosts map."""
    running, info = start_stack(f"{redis_base}/10", site, concurrency=1, extra_env={
        "LODESTAR_BROWSER_ALLOWED_HOSTS": f"127.0.0.1:{egress_site.port}",
        "LODESTAR_EGRESS_HOSTS": "site-a.test=127.0.0.1,site-b.test=127.0.0.1"})
    yield info
    running.stop()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def run(stack: LiveStack, script: str, **params: Any) -> dict[str, Any]:
    resp = stack.http().post(f"{stack.base_url}/agent/tasks", json={"agent_type": "scripted", "instruction": script,
                                                                    **params})
    assert resp.status_code == 200, resp.text
    return stack.wait_ended(resp.json()["task_id"])


@pytest.mark.parametrize("name", ["localhost.", "foo.localhost", "LOCALHOST."])
def test_loopback_names_are_refused_and_the_service_never_answers(stack: LiveStack, listener: Listener,
                                                                  name: str) -> None:
    # Given a loopback service on a port nobody allowed
    # When a task goes to it under a name Chromium maps to loopback itself
    task = run(stack, f"goto http://{name}:{listener.port}/\ndone")
    # Then the task fails naming the host, the service saw no connection, and the refusal is an event
    assert task["status"] == "failed" and f"host '{name.lower()}'" in task["error"].lower(), task
    assert listener.accepts == 0
    blocked = [e for e in events_of(stack, task["task_id"]) if e["type"] == "blocked"]
    assert [(e["host"].lower(), e["port"]) for e in blocked] == [(name.lower(), listener.port)]


def test_a_302_of_the_main_page_to_loopback_sends_nothing_there(stack: LiveStack, egress_site: EgressSite,
                                                                listener: Listener) -> None:
    task = run(stack, f"goto {egress_site.redirect(listener.url('/admin'))}\ndone")
    assert task["status"] == "failed" and listener.url("/admin") in task["error"], task
    assert listener.accepts == 0


def test_a_task_limited_to_one_domain_loads_it_and_is_told_of_the_other(stack: LiveStack,
                                                                         egress_site: EgressSite) -> None:
    # Given a task limited to site-a.test, whose page loads an image from site-b.test (the same site, another name)
    page = egress_site.page(f'<img src="{egress_site.url("/pixel.png", "site-b.test")}" '
                            "onerror=\"document.title='no image'\">", "site-a.test")
    task = run(stack, f'goto {page}\nexpect "no image"\nwait 0.1\ndone "loaded"', allowed_domains=["Site-A.test."])
    # Then the task completes, the record shows its normalized list, and the refused image is an event and in a
    # step result
    assert (task["status"], task["result"], task["allowed_domains"]) == ("completed", "loaded", ["site-a.test"]), task
    events = events_of(stack, task["task_id"])
    blocked = [e for e in events if e["type"] == "blocked"]
    assert [(e["host"], e["reason"]) for e in blocked] == [
        ("site-b.test", "host 'site-b.test' is not in the task's allowed_domains")]
    named = [b for e in events if e["type"] == "step" for r in e["results"] for b in r.get("blocked", [])]
    assert any("site-b.test" in b for b in named), events
    # And navigating to the other name fails the task naming it
    refused = run(stack, f"goto {egress_site.url('/b', 'site-b.test')}\ndone", allowed_domains=["site-a.test"])
    assert refused["status"] == "failed" and "'site-b.test' is not in the task's allowed_domains" in refused["error"]


@pytest.mark.parametrize("value", [["https://a.com"], ["a.com/x"], ["*"], ["a.*.com"], [], ["ok.com", 5], "a.com",
                                   ["a.com"] * 101])
def test_bad_allowed_domains_are_refused_at_submit_naming_the_field(stack: LiveStack, value: Any) -> None:
    resp = stack.http().post(f"{stack.base_url}/agent/tasks", json={"agent_type": "scripted", "instruction": "done",
                                                                    "allowed_domains": value})
    assert resp.status_code == 422, resp.text
    assert "allowed_domains" in resp.json()["error"]["fields"], resp.json()


def test_the_tenant_default_set_with_the_cli_intersects_the_tasks_list(stack: LiveStack,
                                                                       egress_site: EgressSite) -> None:
    tenant = env_tenant(stack.key)
    env = {**os.environ, "LODESTAR_REDIS_URL": stack.redis_url}

    def limits(value: str) -> str:
        out = subprocess.run([sys.executable, "-m", "lodestar.cli", "keys", "limits", tenant, "--allowed-domains",
                              value], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    # Given the operator limited the tenant to site-a.test
    assert '"allowed_domains": ["site-a.test"]' in limits("site-a.test")
    try:
        assert stack.http().get(f"{stack.base_url}/agent/tenant").json()["allowed_domains"] == ["site-a.test"]
        # When a task of the tenant allows every .test name and goes to site-b.test
        task = run(stack, f"goto {egress_site.url('/b', 'site-b.test')}\ndone", allowed_domains=["*.test"])
        # Then the tenant's list still refuses it; site-a.test works
        assert task["status"] == "failed" and "not in its tenant's allowed_domains" in task["error"], task
        assert run(stack, f"goto {egress_site.url('/a', 'site-a.test')}\ndone")["status"] == "completed"
    finally:
        limits("")
    # And a bad pattern is refused by the CLI, naming it
    bad = subprocess.run([sys.executable, "-m", "lodestar.cli", "keys", "limits", tenant, "--allowed-domains",
                          "a.com,https://b.org"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'https://b.org'" in bad.stderr
