"""``lodestar submit``, ``tasks``, ``environments`` and ``keys``: the command-line side of task management.

``submit``, ``tasks`` and ``environments`` are HTTP clients (they need only the API's URL and a key); ``keys``
administers API keys directly in Redis (it needs ``LODESTAR_REDIS_URL``), as an operator on a trusted machine would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm


def read_tasks(path: str) -> list[dict[str, Any]]:
    """Tasks from a JSON array file or an NDJSON file (one task object per line; "-" reads standard input).

    Raises:
        ValueError: a line (NDJSON) or the file (JSON) is not valid JSON; the message names the line.
    """
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return list(json.loads(stripped))
    tasks = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                tasks.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
    return tasks


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """``--url`` and ``--key`` of the HTTP client commands (defaults: ``LODESTAR_URL``, ``LODESTAR_API_KEY``)."""
    p.add_argument("--url", default=os.environ.get("LODESTAR_URL", "http://127.0.0.1:8000"))
    p.add_argument("--key", default=os.environ.get("LODESTAR_API_KEY", ""))


def api_session(args: argparse.Namespace) -> tuple[requests.Session, str]:
    """A session sending ``args.key`` as the bearer key, and the API's base URL without a trailing slash."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {args.key}"
    return session, args.url.rstrip("/")


def print_answer(call: Callable[[], requests.Response]) -> int:
    """Make the request, print its JSON answer (indented; the body as it is when it is not JSON, e.g. a proxy's
    error page); exit code 0 for a 2xx answer, else 1. A connection error is one line on stderr, exit code 1."""
    try:
        resp = call()
    except requests.RequestException as exc:
        print(f"lodestar: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(resp.json(), indent=2))
    except ValueError:
        print(resp.text)
    return 0 if resp.ok else 1


def submit(args: argparse.Namespace) -> int:
    """Submit a file of tasks in batches (progress bar), then follow them to the end with a live summary."""
    session, base = api_session(args)
    try:
        tasks = read_tasks(args.file)
    except (OSError, ValueError) as exc:
        print(f"lodestar submit: {exc}", file=sys.stderr)
        return 2
    batch_ids: list[str] = []
    accepted = rejected = 0
    shown_errors = 0
    with tqdm(total=len(tasks), unit="task", desc="submitting") as bar:
        for start in range(0, len(tasks), args.chunk):
            chunk = tasks[start:start + args.chunk]
            body = "\n".join(json.dumps(t) for t in chunk)
            resp = session.post(f"{base}/agent/tasks/batch", data=body, timeout=300,
                                headers={"Content-Type": "application/x-ndjson"})
            if resp.status_code not in (200, 422):
                bar.close()
                print(f"lodestar submit: HTTP {resp.status_code}: {resp.text[:500]}", file=sys.stderr)
                return 1
            result = resp.json()
            if "batch_id" in result:
                batch_ids.append(result["batch_id"])
            accepted += result.get("accepted", 0)
            rejected += result.get("rejected", 0)
            for error in result.get("errors", []):
                if shown_errors < 10:
                    tqdm.write(f"  task {start + error['index'] + 1}: {error['error']['message']}")
                shown_errors += 1
            bar.update(len(chunk))
    print(f"accepted {accepted}, rejected {rejected}; batches: {', '.join(batch_ids) or '-'}")
    if args.no_follow or not accepted:
        return 0 if not rejected else 1
    return follow(session, base, batch_ids, accepted, rejected)


def follow(session: requests.Session, base: str, batch_ids: list[str], total: int, rejected: int) -> int:
    """Poll the batches' summaries once a second until every task ended; prints a live status line."""
    counts: Counter[str] = Counter()
    with tqdm(total=total, unit="task", desc="running") as bar:
        while True:
            counts = Counter()
            ended = 0
            for batch_id in batch_ids:
                summary = session.get(f"{base}/agent/batches/{batch_id}", timeout=60).json()
                counts.update(summary["counts"])
                counts["expired"] += summary.get("expired", 0)
                ended += summary["ended"]
            bar.update(ended - bar.n)
            bar.set_postfix(queued=counts["queued"], running=counts["running"] + counts["paused"],
                            done=counts["completed"], failed=counts["failed"] + counts["timed_out"],
                            cancelled=counts["cancelled"], refresh=True)
            if ended >= total:
                break
            time.sleep(1)
    print("finished: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v))
    return 0 if counts["completed"] == total and not rejected else 1


def keys(args: argparse.Namespace) -> int:
    """``lodestar keys create|list|revoke|limits`` against the Redis of ``LODESTAR_REDIS_URL``."""
    from shared.settings import load_settings
    from shared.store import TaskStore

    tenants = TaskStore.from_settings(load_settings()).tenants
    try:
        return _keys(tenants, args)
    except ValueError as exc:  # a bad --rate-limit, --allowed-domains pattern or --daily-budget
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _keys(tenants: Any, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        key, principal = tenants.create_key(args.name, args.tenant, max_queued=args.max_queued,
                                            max_running=args.max_running, rate_limit=args.rate_limit,
                                            webhook_url=args.webhook_url, allowed_domains=args.allowed_domains,
                                            daily_budget_usd=args.daily_budget)
        print(f"key:    {key}\nkey id: {principal.key_id}\ntenant: {principal.tenant}\n"
              "Store the key now: it is not shown again (Redis keeps only its SHA-256).")
        return 0
    if args.keys_command == "list":
        rows = tenants.list_keys()
        print(f"{'key id':<14} {'tenant':<20} {'name':<24} {'created':<20} revoked")
        for r in rows:
            created = datetime.fromtimestamp(r["created_at"], UTC).strftime("%Y-%m-%d %H:%M")
            print(f"{r['key_id']:<14} {r['tenant']:<20} {r['name']:<24} {created:<20} {'yes' if r['revoked'] else ''}")
        return 0
    if args.keys_command == "revoke":
        if tenants.revoke(args.key_id):
            print(f"revoked {args.key_id}")
            return 0
        print(f"no single key matches {args.key_id!r} (give the 12-character key id)", file=sys.stderr)
        return 1
    tenants.set_limits(args.tenant, max_queued=args.max_queued, max_running=args.max_running,
                       rate_limit=args.rate_limit, webhook_url=args.webhook_url, allowed_domains=args.allowed_domains,
                       daily_budget_usd=args.daily_budget)
    print(json.dumps(tenants.tenant(args.tenant)))
    return 0


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="tasks as NDJSON (one JSON object per line) or a JSON array; - for stdin")
    add_connection_arguments(p)
    p.add_argument("--chunk", type=int, default=10_000, help="tasks per batch request (at most 10 000)")
    p.add_argument("--no-follow", action="store_true", help="return once submitted")


def add_keys_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True)

    def limits(q: argparse.ArgumentParser) -> None:
        q.add_argument("--max-queued", type=int, help="most queued tasks (0: no limit)")
        q.add_argument("--max-running", type=int, help="most running tasks (0: no limit)")
        q.add_argument("--rate-limit", help='API requests, e.g. "20/second;1000/minute"')
        q.add_argument("--webhook-url", help="default webhook for the tenant's tasks")
        q.add_argument("--allowed-domains", help='the only hosts its tasks may reach, e.g. "a.com,*.b.org" (each '
                       "task's own allowed_domains applies too: a host must match both); \"\" removes it")
        q.add_argument("--daily-budget", type=float, metavar="USD",
                       help="USD the tenant's model calls may cost per UTC day (0: no budget); once spent, submits "
                            "get 429 and running tasks fail before their next call (exit code 8)")

    q = sub.add_parser("create", help="create an API key (for a new tenant unless --tenant)")
    q.add_argument("--name", required=True)
    q.add_argument("--tenant", help="add the key to this existing tenant")
    limits(q)
    sub.add_parser("list", help="list keys (ids, tenants, names; never the keys)")
    q = sub.add_parser("revoke", help="revoke a key by its key id")
    q.add_argument("key_id")
    q = sub.add_parser("limits", help="set a tenant's limits")
    q.add_argument("tenant")
    limits(q)


def tasks(args: argparse.Namespace) -> int:
    """``lodestar tasks list|get|wait|cancel|events``: the task-management calls from a shell (JSON output; exit
    code 1 when the API refuses or cannot be reached)."""
    session, base = api_session(args)
    command = args.tasks_command
    if command == "events":
        try:
            with session.get(f"{base}/agent/tasks/{args.task_id}/events", stream=True, timeout=None) as stream:
                if not stream.ok:
                    print(stream.text, file=sys.stderr)
                    return 1
                for line in stream.iter_lines(decode_unicode=True):
                    if line.startswith("data: "):
                        print(line[6:], flush=True)
        except requests.RequestException as exc:
            print(f"lodestar: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "list":
        params = {k: v for k, v in {"status": args.status, "kind": args.kind, "model": args.model,
                                    "batch_id": args.batch_id, "limit": args.limit}.items() if v is not None}
        for pair in args.metadata or []:
            key, _, value = pair.partition("=")
            params[f"metadata.{key}"] = value
        return print_answer(lambda: session.get(f"{base}/agent/tasks", params=params, timeout=60))
    if command == "get":
        return print_answer(lambda: session.get(f"{base}/agent/tasks/{args.task_id}", timeout=60))
    if command == "wait":
        return print_answer(lambda: session.get(f"{base}/agent/tasks/{args.task_id}/wait",
                                                params={"timeout": args.timeout}, timeout=args.timeout + 30))
    return print_answer(lambda: session.post(f"{base}/agent/tasks/cancel", json={"task_ids": args.task_ids},
                                             timeout=60))


def add_tasks_arguments(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    sub = p.add_subparsers(dest="tasks_command", required=True)
    q = sub.add_parser("list", help="the newest tasks, filtered")
    q.add_argument("--status", help="comma-separated statuses")
    q.add_argument("--kind")
    q.add_argument("--model")
    q.add_argument("--batch-id")
    q.add_argument("--metadata", action="append", help="key=value (repeatable)")
    q.add_argument("--limit", type=int, default=50)
    sub.add_parser("get", help="one task").add_argument("task_id")
    q = sub.add_parser("wait", help="wait until a task ends (or the timeout)")
    q.add_argument("task_id")
    q.add_argument("--timeout", type=float, default=300)
    sub.add_parser("cancel", help="cancel tasks").add_argument("task_ids", nargs="+")
    sub.add_parser("events", help="stream a task's events (one JSON per line)").add_argument("task_id")


def environments(args: argparse.Namespace) -> int:
    """``lodestar environments list|get|delete``: the tenant's saved environments (``/agent/environments``, JSON
    output); exit code 1 when the API refuses (404 unknown, 409 in use by a persistent task) or cannot be reached,
    else 0."""
    session, base = api_session(args)
    command = args.environments_command
    if command == "list":
        params = {k: v for k, v in {"kind": args.kind, "limit": args.limit, "cursor": args.cursor}.items()
                  if v is not None}
        return print_answer(lambda: session.get(f"{base}/agent/environments", params=params, timeout=60))
    url = f"{base}/agent/environments/{args.environment_id}"
    if command == "get":
        return print_answer(lambda: session.get(url, timeout=60))
    return print_answer(lambda: session.delete(url, timeout=60))


def add_environments_arguments(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    sub = p.add_subparsers(dest="environments_command", required=True)
    q = sub.add_parser("list", help="the tenant's environments, last used first")
    q.add_argument("--kind", choices=("browser", "desktop"))
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--cursor", help="the next_cursor of the previous page")
    sub.add_parser("get", help="one environment").add_argument("environment_id")
    sub.add_parser("delete", help="delete an environment and its saved state (refused while a persistent task "
                                  "holds it)").add_argument("environment_id")
