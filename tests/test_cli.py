"""``lodestar up`` starts the whole stack on an embedded Redis, serves tasks, and stops everything on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lodestar.cli import build_parser
from lodestar.stack import free_port
from tests.conftest import chromium_available, need


def test_cli_lists_its_commands() -> None:
    help_text = build_parser().format_help()
    for command in ("up", "api", "worker", "flower", "bench"):
        assert command in help_text


@pytest.mark.browser
@pytest.mark.worker
def test_up_runs_the_stack_on_embedded_redis_and_stops_on_sigterm(tmp_path: Path) -> None:
    need(chromium_available(), "Chromium is not installed")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LODESTAR_REDIS_URL", "LODESTAR_API_KEYS")}
    proc = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "up", "--port", str(port), "--data-dir",
                             str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Given `lodestar up` printed its dev key
        key = None
        output = []
        deadline = time.monotonic() + 90
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
            output.append(line)
            match = re.search(r"API key: (\S+)", line)
            key = match.group(1) if match else None
        assert key, "".join(output)
        # When a client submits a task with it
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {key}"
        base = f"http://127.0.0.1:{port}"
        task_id = http.post(f"{base}/agent/tasks", json={"agent_type": "scripted", "instruction": 'done "up"'},
                            timeout=10).json()["task_id"]
        task: dict = {}
        for _ in range(600):
            task = http.get(f"{base}/agent/tasks/{task_id}", timeout=10).json()
            if task["exit_code"] is not None:
                break
            time.sleep(0.1)
        # Then it runs to completion, and SIGTERM stops the API, the worker and the embedded Redis
        assert (task["status"], task["result"]) == ("completed", "up"), task
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base}/healthz", timeout=2)
        leftovers = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout
        assert leftovers.strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
