"""The ``lodestar bench`` and ``lodestar eval`` subcommands' arguments, apart from the benchmarks themselves.

Building the CLI's parser imports only this module and ``bench.miniwob`` (the standard library and requests):
not ``bench.suite`` (Celery, Redis, the local stack) nor what the benchmarks run (the ``miniwob`` pages, the API,
the workers), so ``lodestar --help`` works on any install and the commands check their extra when they run.
"""

from __future__ import annotations

import argparse
import os

from bench.miniwob import INSTRUCTION as MINIWOB_INSTRUCTION
from bench.miniwob import add_arguments as add_miniwob_arguments

ROW_NAMES = ("submit", "batch", "control", "events", "events-many", "pickup", "memory", "growth", "step", "scale")
"""The rows of ``bench.suite.ROWS``, in order (``tests/bench/test_cli.py`` keeps the two equal)."""


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lodestar bench all|<row>`` (``bench.suite``)."""
    p.add_argument("rows", nargs="*", help=f"rows to run (default all): {', '.join(ROW_NAMES)}")
    p.add_argument("--tasks", type=int, default=5000, help="submit: tasks")
    p.add_argument("--threads", type=int, default=8, help="submit: concurrent client connections")
    p.add_argument("--batch", type=int, default=10_000, help="batch: tasks in the batch")
    p.add_argument("--messages", type=int, default=500, help="control: messages")
    p.add_argument("--streams", type=int, default=1000, help="events: concurrent SSE streams")
    p.add_argument("--events", type=int, default=50, help="events: events per stream")
    p.add_argument("--api-processes", type=int, default=2,
                   help="events: API processes (LODESTAR_API_WORKERS) the streams are spread over (default 2)")
    p.add_argument("--pickups", type=int, default=30, help="pickup: tasks")
    p.add_argument("--queued", type=int, default=100_000, help="memory, growth: queued tasks")
    p.add_argument("--steps", type=int, default=100, help="step: steps per round")
    p.add_argument("--scale-episodes", type=int, default=4, help="scale: episodes per task family per run")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lodestar eval miniwob`` (``bench.eval``)."""
    who = p.add_mutually_exclusive_group()
    who.add_argument("--agent", help="offline agent to evaluate (agent_type: heuristic, scripted); the default is "
                                     "heuristic")
    who.add_argument("--model", help="model to evaluate (the task's model, e.g. anthropic/claude-sonnet-4-5)")
    who.add_argument("--compare", nargs=2, metavar=("A", "B"),
                     help="run A and B on the same seeds and report the paired difference A - B; heuristic and "
                          "scripted are agents, any other name is a model")
    p.add_argument("--families", default="all",
                   help="comma-separated MiniWoB++ task families, or all (default: every family the miniwob "
                        "package ships)")
    p.add_argument("--episodes", type=int, default=5, help="seeds per family (default 5)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each seed (default 1)")
    p.add_argument("--seed", type=int, default=1000, help="first seed; the seeds are seed .. seed + episodes - 1")
    p.add_argument("--concurrency", type=int,
                   help="browser slots of the stack it starts (default 2); with --url, at most this many of the "
                        "run's tasks queued or running at once (default: all submitted at once)")
    p.add_argument("--url", help="a running Lodestar API (default: start a local stack for the run)")
    p.add_argument("--key", help="API key for --url (default: LODESTAR_API_KEY or the first of LODESTAR_API_KEYS)")
    p.add_argument("--out", default="eval-report",
                   help="folder for report.json, report.csv and success.png (default ./eval-report, overwritten)")
    p.add_argument("--instruction", default=MINIWOB_INSTRUCTION,
                   help=f"the task's instruction (default {MINIWOB_INSTRUCTION!r}: the page shows the real one)")
    p.add_argument("--max-steps", type=int, default=15, help="max_steps of each task (default 15)")
    p.add_argument("--max-seconds", type=int, default=60,
                   help="max_duration_seconds of each task (default 60)")
    p.add_argument("--confidence", type=float, default=0.95, help="level of the intervals (default 0.95)")
    p.add_argument("--timeout", type=float, default=4 * 3600,
                   help="seconds for the whole run; what is left then is cancelled (default 14400)")
    p.add_argument("--min-success", type=float, default=0.0,
                   help="exit 1 when the (first) subject's overall success is below this rate")
    p.add_argument("--port", type=int, default=0, help="API port of the local stack (default: a free one)")
    p.add_argument("--serve-host", default="127.0.0.1", help="address the pages are served on (workers must reach it)")
    p.add_argument("--serve-port", type=int, default=0)


def add_eval_parsers(p: argparse.ArgumentParser) -> None:
    """Add the suites of ``lodestar eval`` (``miniwob``); the chosen one is ``args.suite``."""
    sub = p.add_subparsers(dest="suite", required=True)
    add_eval_arguments(sub.add_parser("miniwob", help="MiniWoB++ through the API: success per family with "
                                                       "intervals, report files and a chart"))


def add_bench_parsers(bench: argparse.ArgumentParser) -> None:
    """Add ``miniwob``, ``all`` and one subcommand per row under ``bench``; the chosen one is ``args.bench``."""
    sub = bench.add_subparsers(dest="bench", required=True)
    add_miniwob_arguments(sub.add_parser("miniwob", help="MiniWoB++ episodes through the API: success table"))
    for row in ("all", *ROW_NAMES):
        add_suite_arguments(sub.add_parser(row, help="every overhead row" if row == "all" else f"the {row} row"))
    add_chaos_arguments(sub.add_parser("chaos", help="faults during a few thousand tasks: lost, twice, gaps (both "
                                                     "brokers)"))


def add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lodestar bench chaos`` (``bench.chaos``)."""
    p.add_argument("--tasks", type=int, default=2000, help="tasks to run through the faults (default 2000)")
    p.add_argument("--workers", type=int, default=3, help="worker processes at a time (each one slot)")
    p.add_argument("--broker", choices=["redis", "amqp", "both"], default="both",
                   help="broker(s) to run on; amqp: LODESTAR_TEST_AMQP_URL or --amqp-url (default both)")
    p.add_argument("--amqp-url", default=os.environ.get("LODESTAR_TEST_AMQP_URL",
                                                        "amqp://guest:guest@127.0.0.1:5672//"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for every task to end")
