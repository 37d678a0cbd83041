"""Developer harness for the heuristic policy on MiniWoB++: runs the policy in-process, no API, queue or Redis.

For each task family and seed: open the page, seed its RNG, then run the worker's own see-decide-act loop
(``worker.loop.run_episode``) with ``HeuristicPolicy``, an in-memory control channel (``LocalControl``: nobody
pauses or cancels) and steps recorded in memory instead of Redis, until it ends (``done``/``fail``, max steps, too
many failed steps), and read the page's own score (``WOB_RAW_REWARD_GLOBAL``). Only this harness evaluates
JavaScript on the page (seeding and scoring); the policy sees the screenshot and the ARIA snapshot.

    .venv/bin/python -m bench.miniwob_dev --episodes 20 --tasks click-button,click-link,login-user [-v]

Prints one row per family: successes (raw reward 1), mean raw reward, mean steps and seconds per episode.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.control import LocalControl
from shared.settings import load_settings
from shared.states import ExitCode
from worker.browser import BrowserComputer, BrowserHost
from worker.computer import Observation
from worker.heuristic import HeuristicPolicy
from worker.loop import Outcome
from worker.loop import run_episode as run_loop
from worker.policy import Episode, Policy, StepRecord

CORE_TASKS = ("click-button", "click-link", "click-dialog", "enter-text", "focus-text", "login-user",
              "enter-password", "click-checkboxes")
"""The families the heuristic policy is held to (>= 80% success each)."""
INSTRUCTION = "Follow the instruction on the page."


def miniwob_html() -> Path:
    """The ``html/`` folder of the installed ``miniwob`` package (pages in ``miniwob/``, scripts in ``core/``)."""
    import miniwob

    return Path(miniwob.__file__).parent / "html"


class _QuietHandler(SimpleHTTPRequestHandler):
    # the pages have no <meta charset>: without a charset Chromium reads them as windows-1252 ("CancÃ©l")
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".html": "text/html; charset=utf-8",
                      ".js": "text/javascript; charset=utf-8"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_miniwob() -> Iterator[str]:
    """Serve the MiniWoB++ ``html/`` folder on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(miniwob_html())))
    thread = threading.Thread(target=server.serve_forever, name="miniwob-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class EpisodeResult:
    """One episode: the page's raw reward (None when it never ended), the policy's last word, steps and seconds."""

    task: str
    seed: int
    raw_reward: float | None
    reward: float | None
    steps: int
    seconds: float
    ending: str
    """How the loop ended: "done: <result>", "fail: <reason>", "max steps", or "<exit code>: <error>"."""
    thoughts: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.raw_reward is not None and self.raw_reward >= 1.0 - 1e-9


def run_episode(
    computer: BrowserComputer,
    base_url: str,
    task: str,
    seed: int,
    make_policy: Callable[[str], Policy] = HeuristicPolicy,
    instruction: str = INSTRUCTION,
    max_steps: int = 12,
    max_seconds: float = 300.0,
) -> EpisodeResult:
    """Play one seeded episode of ``task`` with a fresh policy through ``worker.loop.run_episode``; returns the
    page's own score. Playwright errors from opening or scoring the page propagate."""
    page = computer.page
    page.goto(f"{base_url}/miniwob/{task}.html", wait_until="load")
    page.evaluate("(seed) => Math.seedrandom(seed)", f"{task}-{seed}")
    policy = make_policy(instruction)
    episode = Episode(task_id=f"{task}-{seed}", instruction=instruction, max_steps=max_steps)
    steps: list[StepRecord] = []

    def on_step(record: StepRecord, observation: Observation) -> bool:
        steps.append(record)
        return True

    started = time.perf_counter()
    outcome = run_loop(computer, policy, episode, LocalControl(), on_step, deadline=time.monotonic() + max_seconds)
    seconds = time.perf_counter() - started
    done, raw, reward = page.evaluate("[WOB_DONE_GLOBAL, WOB_RAW_REWARD_GLOBAL, WOB_REWARD_GLOBAL]")
    return EpisodeResult(
        task, seed, float(raw) if done else None, float(reward) if done else None, len(steps), seconds,
        _ending(outcome),
        [f"{r.step}: {r.thought} {[x.error for x in r.results if not x.ok] or ''}" for r in steps],
    )


def _ending(outcome: Outcome) -> str:
    if outcome.code == ExitCode.COMPLETED:
        return f"done: {outcome.result or ''}"
    if outcome.code == ExitCode.FAILED:
        return f"fail: {outcome.error or ''}"
    if outcome.code == ExitCode.MAX_STEPS:
        return "max steps"
    return f"{outcome.code.name.lower()}: {outcome.error or ''}"


def run(tasks: list[str], episodes: int, first_seed: int = 0, verbose: bool = False,
        width: int = 640, height: int = 480) -> dict[str, list[EpisodeResult]]:
    """Run ``episodes`` seeded episodes per task in one Chromium; returns the results per task."""
    settings = load_settings(allow_private_networks=True)
    host = BrowserHost(settings)
    out: dict[str, list[EpisodeResult]] = {}
    try:
        with serve_miniwob() as base_url:
            computer = host.open(width, height)
            try:
                for task in tasks:
                    out[task] = []
                    for seed in range(first_seed, first_seed + episodes):
                        result = run_episode(computer, base_url, task, seed)
                        out[task].append(result)
                        if verbose and not result.success:
                            print(f"  FAIL {task} seed={seed} raw={result.raw_reward} {result.ending}")
                            for line in result.thoughts:
                                print(f"      {line}")
            finally:
                computer.close()
    finally:
        host.close()
    return out


def table(results: dict[str, list[EpisodeResult]]) -> str:
    """A text table: task, successes/episodes, rate, mean raw reward, mean steps, mean seconds."""
    rows = [f"{'task':<18} {'success':>9} {'rate':>6} {'raw':>6} {'steps':>6} {'secs':>6}"]
    for task, eps in results.items():
        ok = sum(e.success for e in eps)
        raw = statistics.mean(e.raw_reward or 0.0 for e in eps) if eps else 0.0
        rows.append(f"{task:<18} {ok:>4}/{len(eps):<4} {ok / max(len(eps), 1):>6.0%} {raw:>6.2f} "
                    f"{statistics.mean(e.steps for e in eps) if eps else 0:>6.1f} "
                    f"{statistics.mean(e.seconds for e in eps) if eps else 0:>6.2f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.miniwob_dev``: run the episodes and print the success table; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.miniwob_dev", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="seeded episodes per task (default 20)")
    parser.add_argument("--tasks", default=",".join(CORE_TASKS), help="comma-separated MiniWoB++ task names")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--viewport", default="640x480", help="WIDTHxHEIGHT in CSS pixels (default 640x480, as "
                        "`lodestar bench miniwob` uses)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the policy's thoughts on failures")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.viewport.lower().split("x", 1))
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    started = time.perf_counter()
    results = run(tasks, args.episodes, args.seed, args.verbose, width, height)
    print(table(results))
    print(f"{sum(len(v) for v in results.values())} episodes in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
