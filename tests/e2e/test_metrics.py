"""Metrics during a real MiniWoB++ batch (issue 13): the API's fleet-wide ``/metrics`` and the worker's metrics port
show the figures of what ran, with the API, a Celery worker of two slots and Chromium all real."""

from __future__ import annotations

import collections
import importlib.util
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from lodestar.stack import free_port
from tests.conftest import LiveStack, chromium_available, need, start_stack

pytestmark = [pytest.mark.browser, pytest.mark.worker]

FAMILIES = ("click-button", "click-link", "enter-text", "focus-text")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = None) -> Samples:
    """``{(sample name, sorted labels): value}`` of one scrape of ``url``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.get(url, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def eventually(read: Callable[[], Samples], check: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    """Scrape until ``check`` holds (bounded polling); returns that scrape. AssertionError with the last on timeout."""
    deadline = time.monotonic() + timeout
    samples = read()
    while not check(samples):
        assert time.monotonic() < deadline, f"never held; last scrape: {sorted(samples.items())[:80]}"
        time.sleep(0.2)
        samples = read()
    return samples


@pytest.fixture
def stack(redis_url: str) -> Iterator[tuple[LiveStack, str, int]]:
    """The API and a browser worker with 2 slots and its metrics port, the MiniWoB++ pages served; yields
    ``(the stack, the pages' base URL, the worker's metrics port)``."""
    need(chromium_available(), "Chromium is not installed (apt-get install chromium)")
    need(importlib.util.find_spec("miniwob") is not None, "the MiniWoB++ pages are not installed (the bench extra)")
    from bench.miniwob import serve_miniwob
    from tests.conftest import Site

    port = free_port()
    with serve_miniwob() as (pages, _board):
        site = Site(pages, [])
        env = {"LODESTAR_METRICS_PORT": str(port), "LODESTAR_METRICS_HOST": "127.0.0.1",
               "LODESTAR_METRICS_TOKEN": "metrics-token", "LODESTAR_LOG_FORMAT": "json",
               "LODESTAR_BROWSER_ALLOWED_HOSTS": urllib.parse.urlsplit(pages).netloc}
        processes, live = start_stack(redis_url, site, concurrency=2, extra_env=env)
        try:
            yield live, pages, port
        finally:
            processes.stop()


@pytest.mark.timeout(600)
def test_metrics_show_the_figures_of_a_miniwob_batch(stack: tuple[LiveStack, str, int]) -> None:
    live, pages, port = stack
    http = live.http()
    api = lambda: scrape(f"{live.base_url}/metrics", "metrics-token")  # noqa: E731
    worker = lambda: scrape(f"http://127.0.0.1:{port}/metrics", "metrics-token")  # noqa: E731
    # Given a slow scripted task, paused once it has taken a step (it holds its slot while paused)
    slow = "\n".join([f"goto {pages}/miniwob/click-button.html?seed=1", *["wait 0.2"] * 30, 'done "slow"'])
    held = http.post(f"{live.base_url}/agent/tasks", json={
        "agent_type": "scripted", "instruction": slow, "viewport_width": 640, "viewport_height": 480},
        timeout=30).json()["task_id"]
    live.wait_until(held, lambda t: t["status"] == "running" and t["steps_taken"] >= 1, timeout=120)
    assert http.post(f"{live.base_url}/agent/tasks/{held}/pause", timeout=30).status_code == 200
    # Then the worker shows one busy slot and one idle, and the pause's control latency once it applied it
    paused = eventually(worker, lambda s: total(s, "lodestar_control_latency_seconds_count", command="pause") >= 1)
    assert total(paused, "lodestar_worker_slots", state="busy") == 1
    assert total(paused, "lodestar_worker_slots", state="idle") == 1
    # and the API shows it paused, with its lease
    fleet = api()
    assert total(fleet, "lodestar_tasks", status="paused") == 1 and total(fleet, "lodestar_leases") == 1

    # When it is resumed, and a MiniWoB++ batch of heuristic episodes plus a scripted task that gives up runs
    assert http.post(f"{live.base_url}/agent/tasks/{held}/resume", timeout=30).status_code == 200
    bodies: list[dict[str, Any]] = [
        {"agent_type": "heuristic", "instruction": "Follow the instruction on the page.", "max_steps": 8,
         "start_url": f"{pages}/miniwob/{family}.html?seed={i}", "max_duration_seconds": 120,
         "viewport_width": 640, "viewport_height": 480} for i, family in enumerate(FAMILIES)]
    bodies.append({"agent_type": "scripted", "instruction": 'fail "gives up"', "priority": "low"})
    batch = http.post(f"{live.base_url}/agent/tasks/batch", json={"tasks": bodies}, timeout=60).json()
    assert batch["accepted"] == len(bodies), batch
    ids = [held, *(t["task_id"] for t in batch["tasks"])]
    ended = [live.wait_ended(task_id, timeout=300) for task_id in ids]

    # Then the API's /metrics counts them: submitted, started, ended by status (as the tasks themselves say)
    by_status = collections.Counter(t["status"] for t in ended)
    fleet = eventually(api, lambda s: total(s, "lodestar_tasks_ended_total") == len(ids))
    assert total(fleet, "lodestar_tasks_submitted_total") == len(ids)
    assert total(fleet, "lodestar_tasks_submitted_total", priority="low") == 1
    assert total(fleet, "lodestar_tasks_started_total", kind="browser") >= len(ids)
    for status, n in by_status.items():
        assert total(fleet, "lodestar_tasks_ended_total", status=status, kind="browser") == n, (status, fleet)
    assert by_status["failed"] >= 1  # the one that gives up
    # and nothing is queued, running or held any more
    assert total(fleet, "lodestar_queue_depth") == 0 and total(fleet, "lodestar_tasks") == 0
    assert total(fleet, "lodestar_leases") == 0 and total(fleet, "lodestar_workers_alive", kind="browser") == 1
    # and the worker's port: every task's queue wait and duration, every step's observe / decide / act, the resume
    steps = sum(t["steps_taken"] for t in ended)
    mine = eventually(worker, lambda s: total(s, "lodestar_task_duration_seconds_count") == len(ids))
    assert total(mine, "lodestar_queue_wait_seconds_count", kind="browser") == len(ids)
    assert total(mine, "lodestar_queue_wait_seconds_count", priority="low") == 1
    for phase in ("observe", "decide", "act"):
        assert total(mine, "lodestar_step_seconds_count", phase=phase, kind="browser") >= steps > len(ids)
        assert total(mine, "lodestar_step_seconds_sum", phase=phase) > 0
    assert total(mine, "lodestar_control_latency_seconds_count", command="resume") >= 1
    for status, n in by_status.items():
        assert total(mine, "lodestar_task_duration_seconds_count", status=status) == n
    # and, once each slot has closed its task's environment, both slots idle
    eventually(worker, lambda s: (total(s, "lodestar_worker_slots", state="busy"),
                                  total(s, "lodestar_worker_slots", state="idle")) == (0, 2))
    # and both refuse a scrape without the metrics token
    assert requests.get(f"{live.base_url}/metrics", timeout=30).status_code == 401
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).status_code == 401
