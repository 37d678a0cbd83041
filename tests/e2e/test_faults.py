"""Faults caused for real, on both brokers: a worker SIGKILLed or SIGTERMed (whole process group or main process),
a worker frozen past its lease, a Chromium killed, Redis restarted, the API restarted under open streams. Each test
checks the guarantees of docs/reliability.md: no task lost, stuck or run twice, attempts visible, one end event.

Every test has a fleet of its own (Redis with AOF, the API, two browser workers, each a process group) and waits for
effects by bounded polling.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from lodestar.fleet import Fleet, chromium_pids
from tests.conftest import Receiver, Site, chromium_available, need

pytestmark = [pytest.mark.worker, pytest.mark.browser]

FAST = {"LODESTAR_LEASE_TTL": "3", "LODESTAR_REAPER_INTERVAL": "0.5", "LODESTAR_SHUTDOWN_GRACE": "1"}
"""Short leases and reaper rounds, so a test waits seconds for a recovery, not the default ~20."""


@pytest.fixture
def fleet_factory(broker: str, site: Site, receiver: Receiver,
                  tmp_path: Any) -> Iterator[Callable[..., Fleet]]:
    need(chromium_available(), "Chromium is not installed (apt-get install chromium)")
    made: list[Fleet] = []

    def make(workers: int = 2, **env: str) -> Fleet:
        allowed = f"{urllib.parse.urlsplit(site.base).netloc},{urllib.parse.urlsplit(receiver.url).netloc}"
        fleet = Fleet({**FAST, "LODESTAR_BROWSER_ALLOWED_HOSTS": allowed, "LODESTAR_WEBHOOK_ALLOWED_HOSTS": allowed,
                       **env}, broker_url=broker, log_dir=tmp_path)
        made.append(fleet)
        fleet.start(workers=workers)
        return fleet

    yield make
    for fleet in made:
        fleet.stop()


def slow_script(site: Site, seconds: float, result: str = "ok") -> str:
    """A scripted task that opens a page and then waits ``seconds`` in half-second steps."""
    return "\n".join([f"goto {site.url('counter.html')}", *["wait 0.5"] * int(seconds * 2), f'done "{result}"'])


def start(fleet: Fleet, instruction: str, **extra: Any) -> str:
    resp = fleet.http().post(f"{fleet.base_url}/agent/tasks",
                             json={"instruction": instruction, "agent_type": "scripted", **extra}, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["task_id"])


def get(fleet: Fleet, task_id: str) -> dict[str, Any]:
    return fleet.http().get(f"{fleet.base_url}/agent/tasks/{task_id}", timeout=30).json()


def wait_for(fleet: Fleet, task_id: str, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            task = get(fleet, task_id)
        except (requests.RequestException, ValueError):  # the API or Redis restarting
            time.sleep(0.2)
            continue
        if predicate(task):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never reached the expected state; last: {task}")


def events(fleet: Fleet, task_id: str) -> list[dict[str, Any]]:
    """Every event of an ended task, from its SSE stream."""
    out = []
    with fleet.http().get(f"{fleet.base_url}/agent/tasks/{task_id}/events", stream=True, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    return out


def running_on(fleet: Fleet, task_id: str, steps: int = 2) -> str:
    """Wait until the task has taken ``steps`` steps; returns its worker ("host:pid")."""
    return str(wait_for(fleet, task_id, lambda t: t["status"] == "running" and t["steps_taken"] >= steps)
               and get(fleet, task_id)["worker"])


def assert_ran_once_per_attempt(evs: list[dict[str, Any]]) -> None:
    """One end event; step numbers strictly increase; steps of an attempt never follow a later attempt's."""
    assert [e["type"] for e in evs].count("end") == 1, evs
    steps = [e for e in evs if e["type"] == "step"]
    assert [s["step"] for s in steps] == sorted({s["step"] for s in steps}), steps
    attempts = [s["attempt"] for s in steps]
    assert attempts == sorted(attempts), attempts
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))  # no gap, no duplicate


# --- a worker killed --------------------------------------------------------------------------------------------------
def test_a_killed_worker_s_task_runs_again_on_another_worker(fleet_factory: Callable[..., Fleet],
                                                          site: Site) -> None:
    # Given a task running on one of two workers
    fleet = fleet_factory()
    task_id = start(fleet, slow_script(site, 4))
    first = running_on(fleet, task_id)
    # When that worker's whole process group is SIGKILLed (a machine gone, the OOM killer on a container)
    fleet.signal_worker(first, signal.SIGKILL)
    # Then the task is requeued and completes on the other worker as attempt 2
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["result"], task["attempt"]) == ("completed", "ok", 2), task
    assert task["worker"] != first
    evs = events(fleet, task_id)
    requeued = [e for e in evs if e["type"] == "status" and e["status"] == "queued" and e.get("reason")]
    assert requeued and "worker was lost" in requeued[0]["reason"] and requeued[0]["attempt"] == 1
    assert [e["attempt"] for e in evs if e["type"] == "status" and e["status"] == "running"] == [1, 2]
    assert_ran_once_per_attempt(evs)


def test_a_persistent_task_whose_worker_is_killed_restores_the_last_save_and_saves_once(
        fleet_factory: Callable[..., Fleet], site: Site) -> None:
    # Given an environment a persistent task saved signed in to the site
    fleet = fleet_factory()
    page = site.url("login.html")
    first = start(fleet, f'goto {page}\nexpect "Signed out"\ntype "ada" into "Username"\nclick "Sign in"\n'
                         'expect "Signed in as ada"\ndone "in"', persistent=True)
    saved = wait_for(fleet, first, lambda t: t["exit_code"] is not None)
    assert (saved["status"], saved["result"]) == ("completed", "in"), saved
    env_id = saved["environment_id"]
    # and a persistent task on it, signed in, running on one of the two workers
    waits = "\n".join(["wait 0.5"] * 8)
    task_id = start(fleet, f'goto {page}\nexpect "Signed in as ada"\n{waits}\ndone "kept"', persistent=True,
                    environment_id=env_id)
    worker = running_on(fleet, task_id, steps=3)
    # When its worker is SIGKILLed mid-task
    fleet.signal_worker(worker, signal.SIGKILL)
    # Then the environment stays the task's while it is requeued: another persistent task naming it is refused
    resp = fleet.http().post(f"{fleet.base_url}/agent/tasks", timeout=30, json={
        "instruction": 'done "x"', "agent_type": "scripted", "persistent": True, "environment_id": env_id})
    assert resp.status_code == 409 and resp.json()["error"]["type"] == "environment_in_use", resp.text
    # and attempt 2, on the other worker, starts from the last save (signed in) and saves once when it completes
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["result"], task["attempt"]) == ("completed", "kept", 2), task
    assert task["worker"] != worker
    env = fleet.http().get(f"{fleet.base_url}/agent/environments/{env_id}", timeout=30).json()
    assert (env["saves"], env["source_task_id"], env["in_use_by"]) == (2, task_id, None), env
    assert_ran_once_per_attempt(events(fleet, task_id))


def test_a_task_whose_worker_is_lost_on_its_last_attempt_fails_with_exit_code_6(
        fleet_factory: Callable[..., Fleet], site: Site) -> None:
    fleet = fleet_factory(LODESTAR_MAX_ATTEMPTS="1")
    task_id = start(fleet, slow_script(site, 30))
    fleet.signal_worker(running_on(fleet, task_id), signal.SIGKILL)
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["exit_code"]) == ("failed", 6), task
    assert "LODESTAR_MAX_ATTEMPTS" in task["error"]


def test_a_worker_frozen_past_its_lease_stops_and_does_not_end_the_task(fleet_factory: Callable[..., Fleet],
                                                                         site: Site) -> None:
    # Given a task running on a worker that then freezes (SIGSTOP) for longer than its lease
    fleet = fleet_factory()
    task_id = start(fleet, slow_script(site, 6))
    first = running_on(fleet, task_id)
    frozen = fleet.signal_worker(first, signal.SIGSTOP)
    try:
        # When the reaper gives the task to the other worker, which starts it again
        wait_for(fleet, task_id, lambda t: t["attempt"] == 2 and t["status"] == "running" and t["worker"] != first)
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)  # and the frozen worker wakes up
    # Then the task ends once, by the second worker; the first wrote nothing after it lost the lease (fencing)
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["attempt"]) == ("completed", 2), task
    assert_ran_once_per_attempt(events(fleet, task_id))
    # And the woken worker goes on serving tasks
    assert wait_for(fleet, start(fleet, f'goto {site.url("counter.html")}\ndone "again"'),
                    lambda t: t["exit_code"] is not None)["status"] == "completed"


# --- graceful shutdown ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [True, False], ids=["whole-group", "main-process"])
def test_sigterm_hands_a_long_task_back_at_once_without_using_an_attempt(
        fleet_factory: Callable[..., Fleet], site: Site, group: bool) -> None:
    # Given a long task on one of two workers, and a shutdown grace of 1 s
    fleet = fleet_factory()
    task_id = start(fleet, slow_script(site, 8))
    first = running_on(fleet, task_id)
    # When the worker is asked to stop (systemd's default and Kubernetes signal the whole group; KillMode=mixed the
    # main process only)
    stopped = fleet.signal_worker(first, signal.SIGTERM, group=group)
    # Then it hands the task back (not after a lease TTL), exits, and the task completes on the other worker with
    # the same attempt number
    assert stopped.wait(60) is not None
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["attempt"]) == ("completed", 1), task
    assert task["worker"] != first
    evs = events(fleet, task_id)
    back = [e for e in evs if e["type"] == "status" and e["status"] == "queued" and e.get("reason")]
    assert back and "shut down" in back[0]["reason"]
    assert [e["attempt"] for e in evs if e["type"] == "status" and e["status"] == "running"] == [1, 1]
    assert_ran_once_per_attempt(evs)


def test_sigterm_to_the_main_process_lets_a_task_finish_within_the_grace_period(
        fleet_factory: Callable[..., Fleet], site: Site) -> None:
    # (SIGTERM to the whole group reaches the task's Chromium too, so there the task is handed back at once; the
    # main process alone is what Docker, Kubernetes and systemd's KillMode=mixed signal)
    fleet = fleet_factory(LODESTAR_SHUTDOWN_GRACE="120")
    task_id = start(fleet, slow_script(site, 3))
    first = running_on(fleet, task_id, steps=1)
    stopped = fleet.signal_worker(first, signal.SIGTERM, group=False)
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["attempt"], task["worker"]) == ("completed", 1, first), task
    assert stopped.wait(60) is not None  # and then the worker exits


def test_a_paused_task_is_handed_back_at_once_and_a_resume_runs_it_elsewhere(
        fleet_factory: Callable[..., Fleet], site: Site) -> None:
    fleet = fleet_factory(LODESTAR_SHUTDOWN_GRACE="120")
    task_id = start(fleet, slow_script(site, 3))
    first = running_on(fleet, task_id, steps=1)
    assert fleet.http().post(f"{fleet.base_url}/agent/tasks/{task_id}/pause", timeout=30).ok
    wait_for(fleet, task_id, lambda t: t["status"] == "paused")
    stopped = fleet.signal_worker(first, signal.SIGTERM)
    # the worker does not wait its grace for a paused task: it lets it go and exits
    assert stopped.wait(60) is not None
    paused = wait_for(fleet, task_id, lambda t: t["worker"] is None)
    assert paused["status"] == "paused"
    assert fleet.http().post(f"{fleet.base_url}/agent/tasks/{task_id}/resume", timeout=30).json()["status"] \
        in ("queued", "running")
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["attempt"]) == ("completed", 1) and task["worker"] != first, task


def test_pause_timeout_frees_the_slot_and_a_resume_starts_the_task_again(fleet_factory: Callable[..., Fleet],
                                                                          site: Site) -> None:
    fleet = fleet_factory(workers=1, LODESTAR_PAUSE_TIMEOUT="1")
    task_id = start(fleet, slow_script(site, 2))
    running_on(fleet, task_id, steps=1)
    assert fleet.http().post(f"{fleet.base_url}/agent/tasks/{task_id}/pause", timeout=30).ok
    released = wait_for(fleet, task_id, lambda t: t["status"] == "paused" and t["worker"] is None)
    assert "LODESTAR_PAUSE_TIMEOUT" in released["message"]
    # the only worker's slot is free for other work meanwhile
    other = start(fleet, f'goto {site.url("counter.html")}\ndone "meanwhile"')
    assert wait_for(fleet, other, lambda t: t["exit_code"] is not None)["status"] == "completed"
    assert fleet.http().post(f"{fleet.base_url}/agent/tasks/{task_id}/resume", timeout=30).ok
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["result"]) == ("completed", "ok"), task


# --- the environment crashes ------------------------------------------------------------------------------------------
def test_a_crashed_browser_fails_the_task_with_exit_code_5_and_the_worker_goes_on(
        fleet_factory: Callable[..., Fleet], site: Site) -> None:
    fleet = fleet_factory(workers=1)
    task_id = start(fleet, slow_script(site, 20))
    worker = running_on(fleet, task_id)
    for pid in chromium_pids(int(worker.rsplit(":", 1)[1])):
        os.kill(pid, signal.SIGKILL)
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["exit_code"]) == ("failed", 5), task
    nxt = wait_for(fleet, start(fleet, f'goto {site.url("counter.html")}\ndone "fresh"'),
                   lambda t: t["exit_code"] is not None)
    assert (nxt["status"], nxt["result"], nxt["worker"]) == ("completed", "fresh", worker)


def test_environment_retries_start_a_crashed_task_again(fleet_factory: Callable[..., Fleet], site: Site) -> None:
    fleet = fleet_factory(workers=1, LODESTAR_ENVIRONMENT_RETRIES="1")
    task_id = start(fleet, slow_script(site, 4))
    worker = running_on(fleet, task_id)
    for pid in chromium_pids(int(worker.rsplit(":", 1)[1])):
        os.kill(pid, signal.SIGKILL)
    task = wait_for(fleet, task_id, lambda t: t["exit_code"] is not None)
    assert (task["status"], task["attempt"]) == ("completed", 2), task


# --- Redis restarts ---------------------------------------------------------------------------------------------------
def test_a_redis_restart_mid_batch_loses_no_task_and_strands_none(fleet_factory: Callable[..., Fleet],
                                                                  site: Site) -> None:
    # Given a batch of 12 tasks being worked on
    fleet = fleet_factory()
    body = {"tasks": [{"instruction": slow_script(site, 1, result=f"r{i}"), "agent_type": "scripted"}
                      for i in range(12)]}
    ids = [t["task_id"] for t in fleet.http().post(f"{fleet.base_url}/agent/tasks/batch", json=body,
                                                   timeout=60).json()["tasks"]]
    wait_for(fleet, ids[0], lambda t: t["status"] == "running")
    # When Redis goes away for 5 s and comes back (append-only file)
    fleet.redis.stop()
    down = fleet.http().get(f"{fleet.base_url}/agent/tasks/{ids[0]}", timeout=30)
    assert down.status_code == 503 and down.headers.get("retry-after")  # a clear error while it is down
    time.sleep(5)
    fleet.redis.start()
    # Then every task ends, each with its own result, none stuck in running
    done = [wait_for(fleet, task_id, lambda t: t["exit_code"] is not None, timeout=180) for task_id in ids]
    assert [t["status"] for t in done] == ["completed"] * 12, done
    assert [t["result"] for t in done] == [f"r{i}" for i in range(12)]


# --- webhooks --------------------------------------------------------------------------------------------------------
def test_a_webhook_whose_sender_dies_is_delivered_by_another_worker_with_the_same_id(
        fleet_factory: Callable[..., Fleet], site: Site, receiver: Receiver) -> None:
    # Given a receiver that holds the first delivery attempt for 8 s, and a 2 s webhook timeout
    fleet = fleet_factory(LODESTAR_WEBHOOK_TIMEOUT="2")
    path = f"/hold-{time.monotonic_ns()}"
    receiver.hold[path] = 8.0
    start(fleet, f'goto {site.url("counter.html")}\ndone "hooked"', webhook_url=receiver.url + path)
    # When the worker sending it is killed while it waits for the answer
    deadline = time.monotonic() + 60
    while not receiver.for_path(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.for_path(path), "the first attempt never arrived"
    for proc in list(fleet.workers):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    fleet.start_worker()
    # Then a surviving worker delivers it again, with the same delivery id
    deadline = time.monotonic() + 120
    while len(receiver.for_path(path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    deliveries = receiver.for_path(path)
    assert len(deliveries) >= 2, deliveries
    assert len({headers["Lodestar-Delivery"] for headers, _, _ in deliveries}) == 1


# --- the API restarts ------------------------------------------------------------------------------------------------
def test_streams_resumed_after_an_api_restart_miss_nothing_and_repeat_nothing(fleet_factory: Callable[..., Fleet],
                                                                             site: Site) -> None:
    fleet = fleet_factory(workers=1)
    task_id = start(fleet, slow_script(site, 4))
    seen: list[dict[str, Any]] = []
    last = 0
    restarted = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with fleet.http().get(f"{fleet.base_url}/agent/tasks/{task_id}/events",
                                  headers={"Last-Event-ID": str(last)}, stream=True, timeout=30) as resp:
                for line in resp.iter_lines():
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        seen.append(event)
                        last = event["seq"]
                        if not restarted and event["type"] == "step":
                            restarted = True
                            fleet.stop_api()  # the API crashes under the open stream...
                            fleet.start_api()  # ...and comes back
                            break
                        if event["type"] == "end":
                            break
        except requests.RequestException:
            continue
        if seen and seen[-1]["type"] == "end":
            break
    assert restarted and seen[-1]["type"] == "end"
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))
