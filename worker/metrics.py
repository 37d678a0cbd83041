"""A worker's per-process Prometheus figures, served on ``LODESTAR_METRICS_PORT`` by the worker's main process and
summed over its pool processes (prometheus-client's multiprocess mode): step latency by phase, busy and idle slots,
queue wait, task duration, control latency. The fleet-wide figures are the API's ``GET /metrics``
(``api/metrics.py``). Every metric is listed in docs/operations.md ("Metrics").

How: :func:`setup` runs in the main process before the pool forks (``worker.tasks.create_app``). With a metrics
port it points ``PROMETHEUS_MULTIPROC_DIR`` at a folder of its own (``LODESTAR_METRICS_DIR``, else one under
``TMPDIR``), empties it, and creates the metrics, whose values each process then writes to its own files; the
main process serves them once the worker is ready; a pool process that exits is marked dead (its gauges stop
counting). Without a port the metrics still exist, in memory, unexported (tests, ``--pool solo`` runs).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from shared.settings import Settings
from worker.lifecycle import pool_children

log = logging.getLogger(__name__)

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
CONTROL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """The worker's metric objects (created once per worker, after ``PROMETHEUS_MULTIPROC_DIR`` is set).

    step: ``lodestar_step_seconds{kind, phase}`` histogram, phase observe / decide / act, seconds of one step's
    phase. queue_wait: ``lodestar_queue_wait_seconds{kind, priority}``, from submit to a worker's first claim.
    duration: ``lodestar_task_duration_seconds{kind, status}``, from the first start to the end this worker
    recorded. control: ``lodestar_control_latency_seconds{command}``, from the API's command to the worker applying
    it. slots: ``lodestar_worker_slots{state}`` gauge, busy / idle slots (pool processes) of live processes.
    ``registry``: where they are registered (in multiprocess mode the files are read instead).
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.step = Histogram("lodestar_step_seconds", "Seconds of one phase of an agent step (observe: the "
                              "screenshot and page state; decide: the policy or model call; act: the actions)",
                              ["kind", "phase"], buckets=STEP_BUCKETS, registry=registry)
        self.queue_wait = Histogram("lodestar_queue_wait_seconds", "Seconds from a task's submit to its first "
                                    "claim by a worker", ["kind", "priority"], buckets=WAIT_BUCKETS, registry=registry)
        self.duration = Histogram("lodestar_task_duration_seconds", "Seconds from a task's first start to the "
                                  "end its worker recorded, by terminal status", ["kind", "status"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.control = Histogram("lodestar_control_latency_seconds", "Seconds from a control call on the API "
                                 "(pause, resume, cancel, message) to its task's worker applying it",
                                 ["command"], buckets=CONTROL_BUCKETS, registry=registry)
        self.slots = Gauge("lodestar_worker_slots", "The worker's task slots (pool processes) by state (busy: "
                           "running a task; idle)", ["state"], multiprocess_mode="livesum", registry=registry)


_metrics: list[WorkerMetrics] = []
_server: list[ThreadingHTTPServer] = []
_folder: list[str] = []


def metrics() -> WorkerMetrics:
    """This worker's metrics (created in memory on first use when :func:`setup` did not run)."""
    if not _metrics:
        _metrics.append(WorkerMetrics())
    return _metrics[0]


def folder_for(settings: Settings) -> str:
    """The folder of the worker's per-process metric files: ``metrics_dir``, else ``$TMPDIR/lodestar-metrics-<pid>``
    (the main process's pid: two workers on one host do not share one)."""
    return settings.metrics_dir or os.path.join(tempfile.gettempdir(), f"lodestar-metrics-{os.getpid()}")


def setup(app: Celery, settings: Settings) -> None:
    """Prepare the worker's metrics (in the main process, before the pool forks) and connect the signals that
    serve them on ``settings.metrics_port`` (0: not served) and keep the slots gauge.

    Raises:
        OSError: the metrics folder cannot be made.
    """
    if settings.metrics_port and not _metrics:
        path = folder_for(settings)
        shutil.rmtree(path, ignore_errors=True)  # figures of an earlier run of this worker: not ours
        os.makedirs(path, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        # prometheus-client picks its value class (in memory, or per-process files) when it is first imported,
        # which may have happened before this worker knew its port: pick it again now that the folder is set
        values.ValueClass = values.get_value_class()
        _folder[:] = [path]
    metrics()

    @worker_process_init.connect(weak=False)
    def _slot_started(**_: Any) -> None:
        metrics().slots.labels("idle").set(1)
        metrics().slots.labels("busy").set(0)

    @worker_process_shutdown.connect(weak=False)
    def _slot_gone(**_: Any) -> None:
        if _folder:
            multiprocess.mark_process_dead(os.getpid())

    @worker_ready.connect(weak=False)
    def _serve(sender: Any = None, **_: Any) -> None:
        if not pool_children(sender):  # solo pool: this process is the one slot
            _slot_started()
        if settings.metrics_port:
            serve(settings)

    @worker_shutdown.connect(weak=False)
    def _stop(**_: Any) -> None:
        for server in _server:
            server.shutdown()
            server.server_close()
        _server.clear()
        if _folder and not settings.metrics_dir:
            shutil.rmtree(_folder[0], ignore_errors=True)


def registry() -> CollectorRegistry:
    """A registry of every process's figures (multiprocess mode), or of this process's when there is no folder."""
    if not _folder:
        return REGISTRY
    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=_folder[0])
    return reg


def serve(settings: Settings) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` on ``settings.metrics_host:metrics_port`` in a daemon thread (bearer
    ``metrics_token`` required when set: 401 otherwise).

    Raises:
        OSError: the port cannot be bound (it is logged and the worker runs on without it when called by the
            ``worker_ready`` handler).
    """
    token = settings.metrics_token

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if token and not hmac.compare_digest(given.encode(), token.encode()):
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Bearer")
                self.end_headers()
                return
            body = generate_latest(registry())
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    try:
        server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    except OSError as exc:
        log.error("metrics port %s:%s: %s; this worker's metrics are not served", settings.metrics_host,
                  settings.metrics_port, exc)
        raise
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    _server.append(server)
    log.info("metrics on http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)
    return server


# --- what the runner records -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Count this slot busy while the block runs a task."""
    slots = metrics().slots
    slots.labels("busy").set(1)
    slots.labels("idle").set(0)
    try:
        yield
    finally:
        slots.labels("busy").set(0)
        slots.labels("idle").set(1)


def observe_step(kind: str, timings: Mapping[str, float] | None) -> None:
    """Record one step's phase timings (``StepRecord.timings``: ``{"observe_ms", "decide_ms", "act_ms"}`` in
    milliseconds; empty or None: none measured, as for a human step) as seconds, phase ``observe`` / ``decide`` /
    ``act``."""
    for key, ms in (timings or {}).items():
        metrics().step.labels(kind, key.removesuffix("_ms")).observe(ms / 1000)


def observe_queue_wait(kind: str, priority: str, seconds: float) -> None:
    """Record a task's wait from submit to its first claim."""
    metrics().queue_wait.labels(kind, priority).observe(max(0.0, seconds))


def observe_end(kind: str, status: str, seconds: float) -> None:
    """Record a task's duration at the end this worker recorded (``status``: its terminal status)."""
    metrics().duration.labels(kind, status).observe(max(0.0, seconds))


def observe_control(command: str, seconds: float) -> None:
    """Record a control notice's latency (``shared.control.ControlChannel``'s ``on_notice``)."""
    metrics().control.labels(command).observe(seconds)

