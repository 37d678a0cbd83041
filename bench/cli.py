"""The ``lodestar bench`` subcommands' arguments, apart from the benchmarks themselves.

Building the CLI's parser imports only this module and ``bench.miniwob`` (the standard library and requests):
not ``bench.suite`` (Celery, Redis, the local stack) nor what the benchmarks run (the ``miniwob`` pages, the API,
the workers), so ``lodestar --help`` works on any install and the commands check their extra when they run.
"""

from __future__ import annotations

import argparse
import os

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
