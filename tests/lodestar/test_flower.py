"""``lodestar flower`` is behind authentication by default: it refuses to start open, except ``--unauthenticated``
on a loopback address; with ``--basic-auth`` a real Flower answers 401 without credentials and 200 with them."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from api import create_app
from lodestar.cli import main
from lodestar.stack import free_port
from shared.settings import Settings
from shared.tenants import env_tenant
from tests.api.test_routes import AUTH, api_settings
from tests.conftest import KEY, Site, start_stack

FLOWER_ENV = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")


@pytest.fixture(autouse=True)
def no_flower_auth_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FLOWER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv", [[], ["--address", "0.0.0.0"], ["--port", "5599"]], ids=["default", "public", "port"])
def test_flower_refuses_to_start_without_authentication(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["flower", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to start Flower without authentication" in err and "--basic-auth" in err


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "example.com", ""])
def test_unauthenticated_flower_is_refused_off_loopback(capsys: pytest.CaptureFixture[str], address: str) -> None:
    assert main(["flower", "--unauthenticated", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only on a loopback address" in err


@pytest.mark.parametrize("credential", ["admin", "admin:", ":secret", "admin:secret,guest"])
def test_a_malformed_basic_auth_is_refused(capsys: pytest.CaptureFixture[str], credential: str) -> None:
    assert main(["flower", "--basic-auth", credential]) == 2
    assert "user:password" in capsys.readouterr().err


def test_flower_auth_may_come_from_flowers_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lodestar.cli import build_parser, flower_argv

    args = build_parser().parse_args(["flower", "--", "--url_prefix=flower"])
    assert flower_argv(args, {"FLOWER_BASIC_AUTH": "ops:pw"})[-1] == "--url_prefix=flower"
    assert flower_argv(args, {"FLOWER_AUTH": r".*@example\.com"})[:1] == ["flower"]
    loopback = build_parser().parse_args(["flower", "--unauthenticated", "--address", "::1"])
    assert flower_argv(loopback, {})[:3] == ["flower", "--port=5555", "--address=::1"]


@contextlib.contextmanager
def running_flower(redis_url: str, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """``lodestar flower --basic-auth=ops:s3cret`` on a free port, on ``redis_url``; yields its base URL once it
    answers (within 60 s), and stops it (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    env = {**os.environ, "LODESTAR_REDIS_URL": redis_url, **(extra_env or {})}
    for name in FLOWER_ENV:
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "flower", f"--port={port}",
                             "--basic-auth=ops:s3cret"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "Flower exited during start-up"
            with contextlib.suppress(requests.ConnectionError):
                requests.get(base, timeout=5)
                break
            assert time.monotonic() < deadline, "Flower did not answer within 60 s"
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.redis
def test_flower_with_basic_auth_answers_401_without_credentials_and_200_with_them(redis_url: str) -> None:
    # Given Flower started by `lodestar flower` with basic auth on a free port
    with running_flower(redis_url) as base:
        # When the dashboard and the API are asked without credentials, with wrong ones, and with the right ones
        # (Flower leaves /metrics and /healthcheck open by design, for Prometheus: README says so)
        for path in ("/", "/api/workers", "/tasks"):
            assert requests.get(base + path, timeout=10).status_code == 401, path
            assert requests.get(base + path, auth=("ops", "wrong"), timeout=10).status_code == 401, path
        # Then only the right credentials get in
        assert requests.get(base + "/", auth=("ops", "s3cret"), timeout=10).status_code == 200
        assert requests.get(base + "/api/workers", auth=("ops", "s3cret"), timeout=10).status_code == 200


@pytest.mark.redis
def test_flower_shows_each_queue_s_length_per_priority(settings: Settings, broker: str) -> None:
    # Given tasks queued through the API with no worker running: browser 2 high, 3 normal, 1 low; desktop 1 low
    settings = dataclasses.replace(settings, broker_url=broker)
    client = create_app(test_config=api_settings(settings)).test_client()
    queued = {("browser", "high"): 2, ("browser", "normal"): 3, ("browser", "low"): 1, ("desktop", "low"): 1}
    for (kind, priority), n in queued.items():
        for _ in range(n):
            resp = client.post("/agent/tasks", headers=AUTH, json={
                "instruction": 'done "ok"', "agent_type": "scripted", "kind": kind, "priority": priority})
            assert resp.status_code == 200, resp.get_data(as_text=True)
    with running_flower(settings.redis_url, {"LODESTAR_BROKER_URL": broker}) as base:
        # When an operator reads the queue lengths from Flower's API and its Broker page
        def lengths() -> dict[str, dict[str, Any]]:
            resp = requests.get(base + "/api/queues/length", auth=("ops", "s3cret"), timeout=30)
            assert resp.status_code == 200, resp.text
            return {row["name"]: row for row in resp.json()["active_queues"]}

        deadline = time.monotonic() + 30
        rows = lengths()
        while not broker and rows["browser"].get("messages") != 6 and time.monotonic() < deadline:  # sent
            time.sleep(0.2)
            rows = lengths()
        page = requests.get(base + "/broker", auth=("ops", "s3cret"), timeout=30)
    # Then the API gives each Lodestar queue's counts per priority on its own row (on RabbitMQ too, whose
    # management API has no such count), and nothing else: one row per queue
    assert set(rows) == {"browser", "desktop"} | ({"webhooks"} if not broker else set(rows) & {"webhooks"}), rows
    assert rows["browser"]["priorities"] == {"high": 2, "normal": 3, "low": 1}, rows
    assert rows["desktop"]["priorities"] == {"high": 0, "normal": 0, "low": 1}, rows
    assert "priorities" not in rows.get("webhooks", {})
    if not broker:  # Flower's own count: the sum of kombu's priority lists
        assert [rows[q]["messages"] for q in ("browser", "desktop", "webhooks")] == [6, 1, 0], rows
    # and the Broker page shows a row per priority under each Lodestar queue's own
    assert page.status_code == 200
    shown = dict(re.findall(r'<td>([^<]+)</td>\s*<td class="broker-secondary-column">([^<]*)</td>', page.text))
    names = list(shown)
    for queue, counts in (("browser", ["2", "3", "1"]), ("desktop", ["0", "0", "1"])):
        under = [f"{queue} [{p}]" for p in ("high", "normal", "low")]
        assert [shown[name] for name in under] == counts, shown
        if not broker:  # under the broker's own row for the queue
            assert names[names.index(queue) + 1:names.index(queue) + 4] == under, names


def test_flower_keeps_its_own_rows_when_the_store_is_unreachable() -> None:
    import asyncio

    from lodestar.flower_queues import PriorityQueues
    from shared.settings import load_settings
    from shared.store import TaskStore

    class Broker:
        async def queues(self, names: list[str]) -> list[dict[str, object]]:
            return [{"name": name, "messages": 4} for name in names]

    store = TaskStore.from_settings(load_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    for as_rows in (True, False):
        rows = asyncio.run(PriorityQueues(Broker(), store, as_rows).queues(["browser", "webhooks"]))
        assert rows == [{"name": "browser", "messages": 4}, {"name": "webhooks", "messages": 4}]


@pytest.mark.worker
@pytest.mark.browser
def test_flower_names_each_agent_task_by_its_id_kind_model_and_tenant(redis_base: str, site: Site) -> None:
    # Given the stack (API, a browser worker) and Flower on its broker, Flower following the worker's events
    stack, live = start_stack(f"{redis_base}/8", site, concurrency=1)
    try:
        with running_flower(live.redis_url) as base:
            auth = ("ops", "s3cret")
            deadline = time.monotonic() + 60
            while not requests.get(base + "/api/workers?refresh=1", auth=auth, timeout=30).json():
                assert time.monotonic() < deadline, "Flower never saw the worker"
                time.sleep(0.5)
            # When a task of an offline agent and a task of a model (whose provider has no key: it fails) run
            http = live.http()
            scripted = http.post(f"{live.base_url}/agent/tasks", timeout=30,
                                 json={"instruction": 'done "ok"', "agent_type": "scripted"}).json()["task_id"]
            model = http.post(f"{live.base_url}/agent/tasks", timeout=30,
                              json={"instruction": "open the page", "model": "tzafon.northstar-cua-fast",
                                    "max_steps": 1}).json()["task_id"]
            for task_id in (scripted, model):
                live.wait_ended(task_id, timeout=120)

            def info(task_id: str) -> dict[str, Any]:
                end = time.monotonic() + 60
                while True:
                    resp = requests.get(f"{base}/api/task/info/{task_id}", auth=auth, timeout=30)
                    if resp.status_code == 200 and resp.json().get("state") == "SUCCESS":
                        return dict(resp.json())
                    assert time.monotonic() < end, f"Flower never showed {task_id} done: {resp.text[:300]}"
                    time.sleep(0.5)

            shown = {task_id: info(task_id) for task_id in (scripted, model)}
    finally:
        stack.stop()
    # Then Flower shows each by its Lodestar id (the Celery task id and argument), kind, model or agent, and tenant
    tenant = env_tenant(KEY)
    for task_id, model_shown, agent in ((scripted, "None", "'scripted'"),
                                        (model, "'tzafon.northstar-cua-fast'", "'tzafon.northstar-cua-fast'")):
        task = shown[task_id]
        assert task["uuid"] == task_id and task["name"] == "lodestar.run_task" and task_id in task["args"], task
        for part in (f"'task_id': '{task_id}'", "'kind': 'browser'", f"'model': {model_shown}",
                     f"'agent': {agent}", f"'tenant': '{tenant}'", "'outcome': 'ended'"):
            assert part in task["result"], (part, task["result"])
