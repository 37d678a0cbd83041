"""``lodestar``: the one command for people. ``lodestar --help`` lists the subcommands.

- ``lodestar up``       the whole stack locally (embedded Redis unless LODESTAR_REDIS_URL is set)
- ``lodestar api``      the HTTP API under gunicorn (gevent)
- ``lodestar worker``   a Celery worker for one kind of task
- ``lodestar flower``   Flower, Celery's monitoring UI, on the same broker
- ``lodestar submit``   submit a file of tasks in batches and follow them to the end
- ``lodestar tasks``    list, get, wait for and cancel tasks, stream their events
- ``lodestar keys``     create, list and revoke API keys; set tenant limits
- ``lodestar bench miniwob``  run MiniWoB++ episodes through the API and print the success table
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _api(args: argparse.Namespace) -> int:
    from shared.settings import load_settings

    settings = load_settings()
    if not settings.api_keys:
        print("warning: LODESTAR_API_KEYS is empty: every request will get 401", file=sys.stderr)
    worker_class = args.worker_class or settings.api_worker_class
    if worker_class not in ("gevent", "gthread"):
        print(f"LODESTAR_API_WORKER_CLASS: expected gevent or gthread, got {worker_class!r}", file=sys.stderr)
        return 2
    threads = args.threads or settings.api_threads
    workers = args.workers or settings.api_workers
    argv = ["gunicorn", "--worker-class", worker_class, "--workers", str(workers), "--threads", str(threads),
            # open connections per process; each event stream holds one (gthread: and a thread)
            "--worker-connections", str(max(settings.api_connections, threads + 100)),
            "--bind", f"{args.host or settings.api_host}:{args.port or settings.api_port}",
            "--graceful-timeout", "5",
            # no access log unless asked: gunicorn formats every line even for /dev/null (5% of a submit's CPU)
            *(["--access-logfile", "-"] if args.access_log else []),
            "api:create_app()"]
    os.execvp(sys.executable, [sys.executable, "-m", *argv])


def _worker(args: argparse.Namespace) -> int:
    from worker.tasks import app

    argv = ["worker", "--queues", f"{args.kind},webhooks", "--concurrency", str(args.concurrency),
            "--prefetch-multiplier", "1",
            "--task-events", "--hostname", f"{args.kind}@%h-{os.getpid()}", "--loglevel", args.loglevel,
            "--without-gossip", "--without-mingle"]
    if args.pool:
        argv += ["--pool", args.pool]
    app.worker_main(argv)
    return 0


def _flower(args: argparse.Namespace) -> int:
    from worker.tasks import app

    app.start(["flower", f"--port={args.port}", f"--address={args.address}"])
    return 0


def _up(args: argparse.Namespace) -> int:
    from lodestar.stack import up

    return up(args.port, args.concurrency, Path(args.data_dir))


def _submit(args: argparse.Namespace) -> int:
    from lodestar.client import submit

    return submit(args)


def _tasks(args: argparse.Namespace) -> int:
    from lodestar.client import tasks

    return tasks(args)


def _keys(args: argparse.Namespace) -> int:
    from lodestar.client import keys

    return keys(args)


def _bench(args: argparse.Namespace) -> int:
    if args.bench == "miniwob":
        from bench.miniwob import main as miniwob_main

        return miniwob_main(args)
    from bench.suite import main as suite_main

    if args.bench != "all":
        args.rows = [args.bench, *args.rows]
    return suite_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lodestar", description="Self-hosted backend for computer-use agent tasks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run Redis (embedded), the API, a browser worker and (with Xvfb) a desktop worker "
                                  "until Ctrl-C")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("LODESTAR_WORKER_CONCURRENCY", "1")),
                   help="slots per worker (one Chromium, or one Xvfb display, each)")
    p.add_argument("--data-dir", default="var", help="where the embedded Redis keeps its files")
    p.set_defaults(func=_up)

    p = sub.add_parser("api", help="serve the HTTP API (gunicorn, gevent)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="gunicorn processes (default LODESTAR_API_WORKERS, 1)")
    p.add_argument("--worker-class", choices=["gevent", "gthread"], help="default LODESTAR_API_WORKER_CLASS")
    p.add_argument("--threads", type=int, help="gthread: threads per process (each open event stream holds one)")
    p.add_argument("--access-log", action="store_true")
    p.set_defaults(func=_api)

    p = sub.add_parser("worker", help="run a Celery worker that executes agent tasks")
    p.add_argument("--kind", choices=["browser", "desktop"], default="browser")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("LODESTAR_WORKER_CONCURRENCY", "1")),
                   help="task slots; each browser slot is a process with its own Chromium")
    p.add_argument("--pool", choices=["prefork", "solo"],
                   help="Celery pool (default prefork: one process, one browser or display, per slot)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = sub.add_parser("flower", help="Flower monitoring UI for the queues")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--address", default="127.0.0.1")
    p.set_defaults(func=_flower)

    from lodestar.client import add_keys_arguments, add_submit_arguments, add_tasks_arguments

    p = sub.add_parser("submit", help="submit a file of tasks (NDJSON or JSON array) and follow them to the end")
    add_submit_arguments(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("tasks", help="list, get, wait for, cancel tasks, or stream their events (HTTP client)")
    add_tasks_arguments(p)
    p.set_defaults(func=_tasks)

    p = sub.add_parser("keys", help="create, list and revoke API keys; set tenant limits (needs LODESTAR_REDIS_URL)")
    add_keys_arguments(p)
    p.set_defaults(func=_keys)

    p = sub.add_parser("bench", help="benchmarks")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    from bench.miniwob import add_arguments

    add_arguments(bench_sub.add_parser("miniwob", help="MiniWoB++ episodes through the API: success table"))
    from bench.suite import ROWS
    from bench.suite import add_arguments as add_suite_arguments

    for row in ["all", *ROWS]:
        q = bench_sub.add_parser(row, help="every overhead row" if row == "all" else f"the {row} row")
        add_suite_arguments(q)
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
