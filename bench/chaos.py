"""``lodestar bench chaos``: a fleet under fire, and the proof that no task was lost, run twice or left with a gap.

Starts a :class:`lodestar.fleet.Fleet` (its own Redis with AOF, the API, several worker processes), submits a few
thousand short scripted tasks on a local page (each with a webhook to a local receiver), and while they run:
SIGKILLs workers and starts new ones, SIGTERMs one (whole process group), restarts Redis once, kills a Chromium,
and pauses, resumes, injects messages into and cancels tasks at random. Then it checks every task's record and
event log and prints one table per broker:

- lost: tasks that never ended; twice: two ``end`` events, or steps of an earlier attempt after a later one began;
  gaps: event logs whose seqs are not 1, 2, 3 ...; webhooks missing: ended tasks whose terminal webhook never came;
- recovery after a SIGKILL: for each task running on the killed worker, seconds until it ran again (p50 / p99).

Exit status 1 when lost, twice or gaps is not 0 (or a webhook is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from lodestar.fleet import Fleet, amqp_vhost, chromium_pids

PAGE = b"<!doctype html><html><head><title>Chaos</title></head><body><h1>Chaos page</h1></body></html>"


@dataclass
class Report:
    """What one run saw."""

    broker: str
    tasks: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    webhooks_missing: list[str] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.twice or self.gaps or self.webhooks_missing)

    def table(self) -> str:
        rec = sorted(self.recoveries)
        p50 = f"{statistics.median(rec):.1f}" if rec else "-"
        p99 = f"{rec[min(len(rec) - 1, int(len(rec) * 0.99))]:.1f}" if rec else "-"
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        rows = [("broker", self.broker), ("tasks", self.tasks), ("faults", faults),
                ("completed / failed / cancelled", " / ".join(str(self.statuses[s]) for s in
                                                             ("completed", "failed", "cancelled"))),
                ("lost (never ended)", len(self.lost)), ("ran twice", len(self.twice)),
                ("event logs with gaps", len(self.gaps)), ("ended without their webhook", len(self.webhooks_missing)),
                ("recovery after a SIGKILL, s (p50 / p99)", f"{p50} / {p99} over {len(rec)} tasks"),
                ("wall time, s", f"{self.seconds:.0f}")]
        width = max(len(str(k)) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class _Hooks:
    """A local webhook receiver: the task ids whose terminal webhook arrived."""

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.lock = threading.Lock()
        hooks = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(PAGE)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if body["task"]["exit_code"] is not None:
                    with hooks.lock:
                        hooks.ended.add(body["task"]["task_id"])
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory="."))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run(broker: str, broker_url: str, args: argparse.Namespace) -> Report:
    """One chaos run on one broker (see the module's docstring)."""
    rng = random.Random(args.seed)
    hooks = _Hooks()
    report = Report(broker)
    host = hooks.url.split("//")[1]
    env = {"LODESTAR_BROWSER_ALLOWED_HOSTS": host, "LODESTAR_WEBHOOK_ALLOWED_HOSTS": host,
           "LODESTAR_DEFAULT_MAX_DURATION": "600"}
    started = time.monotonic()
    with Fleet(env, broker_url=broker_url) as fleet:
        fleet.start(workers=args.workers)
        http = fleet.http()
        script = f"goto {hooks.url}/\nwait 0.2\ndone \"ok\""
        ids: list[str] = []
        for start in range(0, args.tasks, 1000):
            body = {"tasks": [{"instruction": script, "agent_type": "scripted", "webhook_url": hooks.url + "/hook"}
                              for _ in range(min(1000, args.tasks - start))]}
            ids += [t["task_id"] for t in http.post(f"{fleet.base_url}/agent/tasks/batch", json=body,
                                                    timeout=120).json()["tasks"]]
        report.tasks = len(ids)
        kills: list[tuple[float, list[str]]] = []
        plan = ["sigkill", "control", "sigkill", "chromium", "control", "sigterm", "redis", "sigkill", "control"]
        step_every = max(2.0, args.tasks * 0.3 / max(args.workers, 1) / (len(plan) + 2))
        for fault in plan:
            time.sleep(step_every)
            with contextlib.suppress(requests.RequestException, ValueError, LookupError, OSError):
                _inject(fault, fleet, http, ids, rng, report, kills)
        _resume_paused(fleet, http)  # chaos paused some: nothing may stay paused for ever
        deadline = time.monotonic() + args.timeout
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for task_id in list(pending)[:200]:
                with contextlib.suppress(requests.RequestException, ValueError):
                    if http.get(f"{fleet.base_url}/agent/tasks/{task_id}", timeout=30).json().get("exit_code") \
                            is not None:
                        pending.discard(task_id)
            time.sleep(0.5)
            if pending:
                _resume_paused(fleet, http)
        report.lost = sorted(pending)
        _await_webhooks(hooks, ids, report, deadline)
        _audit(fleet, http, ids, hooks, report, kills)
    report.seconds = time.monotonic() - started
    hooks.server.shutdown()
    return report


def _resume_paused(fleet: Fleet, http: requests.Session) -> None:
    cursor = None
    while True:
        params = {"status": "paused", "limit": "500", **({"cursor": cursor} if cursor else {})}
        page = http.get(f"{fleet.base_url}/agent/tasks", params=params, timeout=30).json()
        for task in page["data"]:
            with contextlib.suppress(requests.RequestException):
                http.post(f"{fleet.base_url}/agent/tasks/{task['task_id']}/resume", timeout=30)
        cursor = page["next_cursor"]
        if not cursor:
            return


def _await_webhooks(hooks: _Hooks, ids: list[str], report: Report, deadline: float) -> None:
    """Wait (bounded) until every ended task's terminal webhook came (deliveries retry with backoff)."""
    ended = set(ids) - set(report.lost)
    while time.monotonic() < deadline:
        with hooks.lock:
            if ended <= hooks.ended:
                return
        time.sleep(0.5)


def _inject(fault: str, fleet: Fleet, http: requests.Session, ids: list[str], rng: random.Random, report: Report,
            kills: list[tuple[float, list[str]]]) -> None:
    running = [t for t in http.get(f"{fleet.base_url}/agent/tasks?status=running&limit=50", timeout=30).json()["data"]]
    if fault == "sigkill" and running:
        victim = rng.choice(running)["worker"]
        on_it = [t["task_id"] for t in running if t["worker"] == victim]
        fleet.signal_worker(victim, signal.SIGKILL)
        kills.append((time.time(), on_it))
        fleet.start_worker()
        report.faults["worker SIGKILL"] += 1
    elif fault == "sigterm" and running:
        fleet.signal_worker(rng.choice(running)["worker"], signal.SIGTERM)
        fleet.start_worker()
        report.faults["worker SIGTERM"] += 1
    elif fault == "chromium" and running:
        for pid in chromium_pids(int(rng.choice(running)["worker"].rsplit(":", 1)[1])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        report.faults["Chromium killed"] += 1
    elif fault == "redis":
        fleet.restart_redis(outage=3.0)
        report.faults["Redis restart"] += 1
    elif fault == "control":
        for task_id in rng.sample(ids, min(10, len(ids))):
            verb = rng.choice(["pause", "resume", "messages", "cancel"])
            body = {"message": "chaos says hi"} if verb == "messages" else None
            http.post(f"{fleet.base_url}/agent/tasks/{task_id}/{verb}", json=body, timeout=30)
            report.faults[f"{verb} (API)"] += 1


def _audit(fleet: Fleet, http: requests.Session, ids: list[str], hooks: _Hooks, report: Report,
           kills: list[tuple[float, list[str]]]) -> None:
    """Read every task's record and events; fill the report's counts."""
    again: dict[str, float] = {}
    for task_id in ids:
        with contextlib.suppress(requests.RequestException, ValueError):
            task = http.get(f"{fleet.base_url}/agent/tasks/{task_id}", timeout=30).json()
            report.statuses[task["status"]] += 1
            if task["exit_code"] is None:
                continue
            evs = []
            with http.get(f"{fleet.base_url}/agent/tasks/{task_id}/events", stream=True, timeout=60) as resp:
                for line in resp.iter_lines():
                    if line.startswith(b"data: "):
                        evs.append(json.loads(line[6:]))
            if [e["seq"] for e in evs] != list(range(1, len(evs) + 1)):
                report.gaps.append(task_id)
            steps = [e for e in evs if e["type"] == "step"]
            attempts = [s.get("attempt", 0) for s in steps]
            if ([e["type"] for e in evs].count("end") != 1 or attempts != sorted(attempts)
                    or [s["step"] for s in steps] != sorted({s["step"] for s in steps})):
                report.twice.append(task_id)
            starts = [e["ts"] for e in evs if e["type"] == "status" and e["status"] == "running" and
                      e.get("attempt", 1) > 1]
            if starts:
                again[task_id] = starts[0]
    for killed_at, on_it in kills:
        report.recoveries += [again[t] - killed_at for t in on_it if t in again and again[t] > killed_at]
    with hooks.lock:
        report.webhooks_missing = [t for t in ids if t not in hooks.ended and t not in report.lost]


def main(args: argparse.Namespace) -> int:
    """Run the chaos bench on the chosen broker(s), print a table each; 1 when a guarantee was broken."""
    brokers = ["redis", "amqp"] if args.broker == "both" else [args.broker]
    ok = True
    for broker in brokers:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(amqp_vhost(args.amqp_url)) if broker == "amqp" else ""
            report = run(broker, url, args)
        print(report.table(), flush=True)
        print(flush=True)
        ok = ok and report.ok
    return 0 if ok else 1
