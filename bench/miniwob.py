"""``lodestar bench miniwob``: MiniWoB++ episodes submitted as agent tasks through the HTTP API, scored by the pages.

1. Serve the task pages shipped by ``pip install miniwob`` on 127.0.0.1. Each page is served with a small script
   added: it seeds the page's RNG from ``?seed=`` (reproducible episodes) and, when the page ends its episode,
   sends the page's own reward (``WOB_REWARD_GLOBAL`` / ``WOB_RAW_REWARD_GLOBAL``) to this server. The agent's
   claim of success is never used.
2. Submit one task per episode (``agent_type`` heuristic by default, instruction "Follow the instruction on the
   page.", ``start_url`` the seeded page), as a user's client would, then follow them to the end.
3. Print per task family: success rate (raw reward 1), mean reward, steps, seconds, and overall throughput.

Without ``--url`` it runs its own stack (``lodestar up``) for the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

DEFAULT_TASKS = ("click-button", "click-link", "click-dialog", "enter-text", "focus-text", "login-user",
                 "enter-password", "click-checkboxes")
INSTRUCTION = "Follow the instruction on the page."

_REPORTER = b"""
<script>
(function () {
  var q = new URLSearchParams(window.location.search);
  if (q.get('seed') !== null) { Math.seedrandom(q.get('seed')); }
  var episode = q.get('episode');
  var original = core.endEpisode;
  core.endEpisode = function (reward, timeProportional, reason) {
    var live = core.EP_TIMER !== null;
    original.apply(this, arguments);
    if (live && episode) {
      // synchronous, inside the user's click: a beacon could be dropped when the context closes right after
      var xhr = new XMLHttpRequest();
      xhr.open('POST', '/__reward', false);
      xhr.send(JSON.stringify({episode: episode, reward: WOB_REWARD_GLOBAL, raw: WOB_RAW_REWARD_GLOBAL,
                               reason: WOB_REWARD_REASON}));
    }
  };
})();
</script>
"""


def miniwob_root() -> Path:
    """The ``html/`` folder of the installed ``miniwob`` package (task pages under ``miniwob/``)."""
    import miniwob

    return Path(miniwob.__file__).parent / "html"


def available_tasks() -> list[str]:
    """Every MiniWoB++ task family the installed ``miniwob`` package ships (its ``html/miniwob/*.html``), sorted."""
    return sorted(p.stem for p in (miniwob_root() / "miniwob").glob("*.html"))


def resolve_families(spec: str) -> list[str]:
    """The families named by ``--families``: "all" (every family the package ships, sorted) or comma-separated
    names, in the order given, duplicates dropped.

    Raises:
        ValueError: a name is not a family the package ships (the message lists the unknown ones), or none given.
    """
    if spec.strip().lower() == "all":
        return available_tasks()
    names = list(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    if not names:
        raise ValueError("no MiniWoB++ family given")
    unknown = sorted(set(names) - set(available_tasks()))
    if unknown:
        raise ValueError(f"unknown MiniWoB++ families: {', '.join(unknown)} (see --families all)")
    return names


class RewardBoard:
    """Rewards the pages reported, by episode id (first report wins: a page scores an episode once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rewards: dict[str, dict[str, Any]] = {}

    def report(self, data: dict[str, Any]) -> None:
        with self._lock:
            self.rewards.setdefault(str(data.get("episode")), data)

    def get(self, episode: str) -> dict[str, Any] | None:
        with self._lock:
            return self.rewards.get(episode)


class _Handler(SimpleHTTPRequestHandler):
    board: RewardBoard

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        if self.path.split("?")[0] == "/__reward":
            length = int(self.headers.get("Content-Length") or 0)
            with contextlib.suppress(ValueError):
                self.board.report(json.loads(self.rfile.read(min(length, 65536)) or b"{}"))
            self.send_response(204)
            self.end_headers()
            return
        self.send_error(404)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/miniwob/") and path.endswith(".html"):
            file = Path(self.translate_path(path))
            if file.is_file():
                html = file.read_bytes()
                html = html.replace(b"</body>", _REPORTER + b"</body>") if b"</body>" in html else html + _REPORTER
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(html)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(html)
                return
        super().do_GET()


@contextlib.contextmanager
def serve_miniwob(host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, RewardBoard]]:
    """Serve the MiniWoB++ pages with the reward reporter; yields ``(base URL, board)``."""
    board = RewardBoard()
    handler = type("Handler", (_Handler,), {"board": board})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(miniwob_root())))
    thread = threading.Thread(target=server.serve_forever, name="miniwob-http", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", board
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class EpisodeRun:
    family: str
    seed: int
    episode: str
    task_id: str = ""
    submit_error: str | None = None
    record: dict[str, Any] = field(default_factory=dict)


def _submit(session: requests.Session, base_url: str, run: EpisodeRun, page_url: str, args: argparse.Namespace,
            ) -> None:
    body = {"instruction": INSTRUCTION, "agent_type": args.agent, "kind": "browser", "start_url": page_url,
            "max_steps": args.max_steps, "max_duration_seconds": 60, "viewport_width": 640, "viewport_height": 480,
            "metadata": {"bench": "miniwob", "family": run.family, "seed": str(run.seed)}}
    resp = session.post(f"{base_url}/agent/tasks", json=body, timeout=30)
    if resp.ok:
        run.task_id = resp.json()["task_id"]
    else:
        run.submit_error = f"HTTP {resp.status_code}: {resp.text[:200]}"


def run_bench(base_url: str, key: str, args: argparse.Namespace) -> int:
    """Run the episodes against the API at ``base_url``; prints the table; returns a process exit code."""
    try:
        families = resolve_families(args.families)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    with serve_miniwob(args.serve_host, args.serve_port) as (pages, board):
        runs = [EpisodeRun(f, args.seed + i, f"{f}-{args.seed + i}-{time.time_ns()}")
                for i in range(args.episodes) for f in families]
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: _submit(session, base_url, r, f"{pages}/miniwob/{r.family}.html?seed={r.seed}"
                                                                  f"&episode={r.episode}", args), runs))
        submitted = time.monotonic() - started
        print(f"submitted {sum(1 for r in runs if r.task_id)} tasks in {submitted:.1f} s "
              f"({len(runs) / max(submitted, 1e-9):.0f} tasks/s); following them...", flush=True)
        _follow(session, base_url, [r for r in runs if r.task_id], args.timeout)
        elapsed = time.monotonic() - started
        return _report(runs, board, elapsed, args.min_success)


QUEUED_LOOKAHEAD = 8
"""Consecutive still-queued tasks after which a polling round stops: the rest were submitted later at the same
priority, so they wait behind these (FIFO). Keeps a round O(running) instead of O(submitted) on a whole suite."""


def _follow(session: requests.Session, base_url: str, runs: list[EpisodeRun], timeout: float) -> None:
    pending = {r.task_id: r for r in runs}
    deadline = time.monotonic() + timeout
    last_line = ""
    while pending and time.monotonic() < deadline:
        counts: dict[str, int] = defaultdict(int)
        queued_in_a_row = 0
        for task_id, run in list(pending.items()):  # in submission order
            if queued_in_a_row >= QUEUED_LOOKAHEAD:
                counts["queued"] += 1  # not asked this round: submitted after queued ones
                continue
            resp = session.get(f"{base_url}/agent/tasks/{task_id}", timeout=30)
            if resp.ok:
                run.record = resp.json()
                counts[run.record["status"]] += 1
                queued_in_a_row = queued_in_a_row + 1 if run.record["status"] == "queued" else 0
                if run.record.get("exit_code") is not None:
                    del pending[task_id]
        done = len(runs) - len(pending)
        line = (f"  {done}/{len(runs)} ended | queued {counts['queued']} running {counts['running']} "
                f"paused {counts['paused']}")
        if line != last_line:
            print(line, flush=True)
            last_line = line
        if pending:
            time.sleep(0.5)


def _report(runs: list[EpisodeRun], board: RewardBoard, elapsed: float, min_success: float) -> int:
    rows: list[tuple[str, int, float, float, float, float, dict[str, int]]] = []
    by_family: dict[str, list[EpisodeRun]] = defaultdict(list)
    for r in runs:
        by_family[r.family].append(r)
    total_ok = 0
    for family, group in by_family.items():
        rewards = [board.get(r.episode) for r in group]
        raw = [float(x["raw"]) if x else 0.0 for x in rewards]
        ok = sum(1 for v in raw if v >= 1.0)
        total_ok += ok
        steps = [r.record.get("steps_taken") or 0 for r in group]
        secs = [_duration(r.record) for r in group if r.record.get("finished_at")]
        statuses: dict[str, int] = defaultdict(int)
        for r in group:
            statuses[r.record.get("status") or ("not submitted" if r.submit_error else "unfinished")] += 1
        rows.append((family, len(group), ok / len(group), statistics.mean(
            float(x["reward"]) if x else 0.0 for x in rewards), statistics.mean(steps),
            statistics.mean(secs) if secs else float("nan"), dict(statuses)))
    width = max([20, *(len(f) + 1 for f in by_family)])
    print()
    print(f"{'task family':<{width}} {'episodes':>8} {'success':>8} {'reward':>7} {'steps':>6} {'seconds':>8}  "
          "statuses")
    for family, n, rate, reward, mean_steps, mean_secs, by_status in rows:
        print(f"{family:<{width}} {n:>8} {rate:>7.0%} {reward:>7.2f} {mean_steps:>6.1f} {mean_secs:>8.2f}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())))
    overall = total_ok / max(len(runs), 1)
    print(f"{'all':<{width}} {len(runs):>8} {overall:>7.0%}")
    print(f"throughput: {len(runs) / elapsed * 60:.1f} episodes/min ({len(runs)} episodes in {elapsed:.1f} s)")
    errors = [r.submit_error for r in runs if r.submit_error]
    if errors:
        print(f"{len(errors)} submissions failed, e.g. {errors[0]}")
    return 0 if overall >= min_success and not errors else 1


def _duration(record: dict[str, Any]) -> float:
    from datetime import datetime

    start = record.get("started_at") or record.get("created_at")
    end = record.get("finished_at")
    if not start or not end:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=int, default=10, help="episodes per task family")
    p.add_argument("--families", "--tasks", dest="families", default=",".join(DEFAULT_TASKS),
                   help="comma-separated MiniWoB++ task families, or all (every family the miniwob package ships); "
                        "--tasks is the old name")
    p.add_argument("--agent", default="heuristic", help="agent_type of the tasks")
    p.add_argument("--max-steps", type=int, default=15)
    p.add_argument("--seed", type=int, default=1000, help="first seed; episode i uses seed + i")
    p.add_argument("--url", help="an existing Lodestar API (default: start a local stack for the run)")
    p.add_argument("--key", help="API key for --url (default: LODESTAR_API_KEY or the first of LODESTAR_API_KEYS)")
    p.add_argument("--concurrency", type=int, default=2, help="browser slots of the local stack")
    p.add_argument("--port", type=int, default=0, help="API port of the local stack (default: a free one)")
    p.add_argument("--serve-host", default="127.0.0.1", help="address the pages are served on (workers must reach it)")
    p.add_argument("--serve-port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for all episodes")
    p.add_argument("--min-success", type=float, default=0.0, help="exit 1 when overall success is below this")


def main(args: argparse.Namespace) -> int:
    import os

    from lodestar.stack import free_port, running_stack

    if args.url:
        key = args.key or os.environ.get("LODESTAR_API_KEY") or os.environ.get("LODESTAR_API_KEYS", "").split(",")[0]
        return run_bench(args.url.rstrip("/"), key, args)
    serve_port = args.serve_port or free_port()
    args.serve_port = serve_port
    extra = {"LODESTAR_BROWSER_ALLOWED_HOSTS": f"{args.serve_host}:{serve_port}"}
    print(f"starting a local Lodestar ({args.concurrency} browser slots)...", flush=True)
    with running_stack(args.port or free_port(), args.concurrency, Path("var"), extra_env=extra,
                       quiet=True) as (base_url, key):
        return run_bench(base_url, key, args)
