"""``lodestar eval miniwob`` against a real stack: a paired comparison of two agents writes its report files, and an
episode whose browser is killed (SIGKILL to the worker's real Chromium) ends with exit code 5 and is relaunched once.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bench.miniwob
from bench.eval.stats import wilson_interval
from lodestar.cli import main
from lodestar.stack import free_port
from shared.settings import load_settings
from shared.store import TaskStore
from tests.conftest import KEY, LiveStack, Site, need, start_stack

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]


@pytest.fixture(scope="module")
def pages_port() -> int:
    """The port the eval serves the MiniWoB++ pages on (the stack's browsers are allowed to reach it)."""
    return free_port()


@pytest.fixture(scope="module")
def stack(redis_base: str, site: Site, pages_port: int) -> Iterator[LiveStack]:
    """API + a browser worker with 2 slots on its own database; its browsers may open the eval's pages."""
    need(importlib.util.find_spec("miniwob") is not None, "the miniwob package is not installed (the bench extra)")
    hosts = f"{urllib.parse.urlsplit(site.base).netloc},127.0.0.1:{pages_port}"
    proc, info = start_stack(f"{redis_base}/10", site, concurrency=2,
                             extra_env={"LODESTAR_BROWSER_ALLOWED_HOSTS": hosts})
    yield info
    proc.stop()


def eval_argv(stack: LiveStack, pages_port: int, out: Path, *extra: str) -> list[str]:
    return ["eval", "miniwob", "--url", stack.base_url, "--key", KEY, "--serve-port", str(pages_port),
            "--out", str(out), "--timeout", "600", *extra]


def test_a_comparison_of_two_agents_writes_the_report_with_intervals(stack: LiveStack, pages_port: int,
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Given two families and two agents on the same two seeds
    families = ["click-button", "enter-text"]
    # When the evaluation runs against the deployment
    code = main(eval_argv(stack, pages_port, tmp_path, "--compare", "heuristic", "scripted",
                          "--families", ",".join(families), "--episodes", "2"))
    printed = capsys.readouterr().out
    # Then every episode ended and the three files are there
    assert code == 0, printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["run"]["subjects"] == [{"name": "heuristic", "kind": "agent"}, {"name": "scripted", "kind": "agent"}]
    rows = {(r["subject"], r["family"]): r for r in report["families"]}
    assert set(rows) == {(s, f) for s in ("heuristic", "scripted") for f in families}
    for row in [*rows.values(), *report["overall"]]:
        # each rate is the page's successes over the episodes, inside its Wilson interval
        assert row["episodes"] == (2 if row["family"] != "all" else 4)
        assert row["rate"] == row["successes"] / row["episodes"]
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(row["successes"], row["episodes"]))
        assert row["ci_low"] <= row["rate"] <= row["ci_high"]
        assert row["relaunched"] == 0 and row["unfinished"] == 0
    # the scripted agent cannot read "Follow the instruction on the page." as a script: its tasks fail at once,
    # an agent failure (exit code 1), never relaunched, and the pages score nothing
    scripted = [e for e in report["episodes"] if e["subject"] == "scripted"]
    assert [e["exit_code"] for e in scripted] == [1, 1, 1, 1]
    assert not any(e["success"] for e in scripted) and all(e["raw_reward"] is None for e in scripted)
    heuristic = [e for e in report["episodes"] if e["subject"] == "heuristic"]
    assert {(e["family"], e["seed"]) for e in heuristic} == {(e["family"], e["seed"]) for e in scripted}
    for e in heuristic:  # success is the page's own raw reward, never the agent's word
        assert e["success"] == (e["raw_reward"] is not None and e["raw_reward"] >= 1.0)
    # the paired difference is heuristic - scripted on the same seeds, inside its interval
    comparison = report["comparison"]
    assert (comparison["a"], comparison["b"]) == ("heuristic", "scripted")
    for family in families:
        d = comparison["families"][family]
        assert d["pairs"] == 2
        assert d["difference"] == pytest.approx(rows[("heuristic", family)]["rate"])
        assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    assert comparison["overall"]["pairs"] == 4
    # the CSV has a row per subject and family, then an overall row per subject
    with (tmp_path / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["subject"], r["family"]) for r in table] == [
        ("heuristic", "click-button"), ("heuristic", "enter-text"), ("scripted", "click-button"),
        ("scripted", "enter-text"), ("heuristic", "all"), ("scripted", "all")]
    assert "paired difference heuristic - scripted" in printed and str(tmp_path / "success.png") in printed


# -- killing the browser ---------------------------------------------------------------------------------------------
def _process_table() -> dict[int, tuple[str, int]]:
    """pid -> (command name, parent pid) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it exited meanwhile
                continue
            name = stat[stat.index("(") + 1: stat.rindex(")")]
            table[int(entry.name)] = (name, int(stat[stat.rindex(")") + 2:].split()[1]))
    return table


def browser_processes_of(pid: int) -> list[int]:
    """The Chromium browser processes (not their renderers) started by process ``pid`` or its descendants."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, (_, parent) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            name, parent = table[child]
            if "chrom" in name and "chrom" not in table.get(parent, ("", 0))[0]:
                found.append(child)
            todo.append(child)
    return found


def test_an_episode_whose_browser_is_killed_is_relaunched_once(stack: LiveStack, pages_port: int, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Given the first attempt of one episode held while its page loads (its task is running, its browser open)
    arrived, release = threading.Event(), threading.Event()
    held: dict[str, str] = {}
    serve = bench.miniwob._Handler.do_GET

    def holding_get(handler: Any) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)
        episode = query.get("episode", [""])[0]
        if query.get("seed") == ["1000"] and not episode.endswith("-r") and not held:
            held["episode"] = episode
            arrived.set()
            release.wait(60)
        serve(handler)

    monkeypatch.setattr(bench.miniwob._Handler, "do_GET", holding_get)
    result: dict[str, int] = {}
    run = threading.Thread(target=lambda: result.update(code=main(eval_argv(
        stack, pages_port, tmp_path, "--agent", "heuristic", "--families", "click-button", "--episodes", "2"))))
    run.start()
    try:
        assert arrived.wait(120), "the held page was never requested"
        # When the Chromium of the worker process running it is killed for real
        tasks = stack.http().get(f"{stack.base_url}/agent/tasks",
                                 params={"metadata.episode": held["episode"]}, timeout=10).json()["data"]
        assert len(tasks) == 1 and tasks[0]["status"] == "running", tasks
        store = TaskStore.from_settings(load_settings(redis_url=stack.redis_url))
        record = store.get(tasks[0]["task_id"])
        assert record is not None and record.worker, record
        browsers = browser_processes_of(int(record.worker.rsplit(":", 1)[1]))
        assert len(browsers) == 1, browsers
        os.kill(browsers[0], signal.SIGKILL)
        first = stack.wait_ended(tasks[0]["task_id"], timeout=120)
    finally:
        release.set()
        run.join(300)
    assert not run.is_alive()
    # Then that task failed for a system reason (exit code 5), the eval ran the episode again, once, and says so
    assert (first["status"], first["exit_code"]) == ("failed", 5), first
    printed = capsys.readouterr().out
    assert result["code"] == 0, printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["overall"][0]["relaunched"] == 1 and report["overall"][0]["episodes"] == 2
    assert report["families"][0]["relaunched"] == 1
    again = [e for e in report["episodes"] if e["relaunched_after"]]
    assert len(again) == 1
    assert again[0]["relaunched_after"] == {"task_id": first["task_id"], "exit_code": 5, "error": first["error"]}
    assert again[0]["attempt"] == 2 and again[0]["seed"] == 1000 and again[0]["exit_code"] not in (5, 6)
    assert "relaunched after a system failure (exit code 5 or 6): 1" in printed
