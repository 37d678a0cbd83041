"""A worker's life around its tasks: the reaper thread in the consuming process, and a shutdown that hands tasks
back instead of dropping them.

Shutdown (``docs/reliability.md``): systemd's default ``KillMode=control-group`` sends SIGTERM to every process of
the worker, pool children and browsers included; Docker, Kubernetes (the container's PID 1) and systemd's
``KillMode=mixed`` send it to the main process only. Either way each process that runs a task sets :data:`STOPPING`
(the children through their own SIGTERM handler, installed when they start their first task, since billiard resets
the handlers before; the main process forwards its warm shutdown to them). The task's checkpoints then let it finish
within ``shutdown_grace`` seconds or hand it back (a paused task, or one whose browser got the signal too, at once),
and Celery's warm shutdown stops taking new tasks and waits for that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_ready, worker_shutting_down

from shared.queue import Dispatcher
from shared.store import TaskStore
from shared.task import KINDS
from worker.reaper import Reaper

log = logging.getLogger(__name__)

STOPPING = threading.Event()
"""Set when this process was asked to stop (SIGTERM): running tasks finish within the grace or are handed back."""
_stopping_since = [0.0]
_reaper: list[Reaper] = []
_close_hooks: list[Any] = []
_consumer: list[Any] = []
_main_pid = [0]


def stopping_for() -> float | None:
    """Seconds since this process was asked to stop, or None while it is not stopping."""
    return time.monotonic() - _stopping_since[0] if STOPPING.is_set() else None


def request_stop(*_: Any) -> None:
    """Mark this process as stopping (a SIGTERM handler, or called directly)."""
    if not STOPPING.is_set():
        _stopping_since[0] = time.monotonic()
        STOPPING.set()
        log.info("asked to stop: running tasks get their grace period, then are handed back")


def install_stop_handler() -> None:
    """Make SIGTERM mark this process as stopping instead of killing it: in a pool child, at its first task
    (billiard installs its own handlers after the child's start-up signals). Not in the main process (a solo pool):
    Celery's own handler starts the warm shutdown there, which marks it stopping (``worker_shutting_down``)."""
    if os.getpid() != _main_pid[0] and signal.getsignal(signal.SIGTERM) is not request_stop:
        signal.signal(signal.SIGTERM, request_stop)


def on_close(hook: Any) -> None:
    """Run ``hook()`` when this process's pool child shuts down (closing browsers and displays)."""
    _close_hooks.append(hook)


def pool_children(consumer: Any) -> list[int]:
    """Pids of the prefork pool's processes of a Celery consumer (none for the solo and thread pools, whose tasks
    run in this process)."""
    processes = getattr(getattr(getattr(consumer, "pool", None), "_pool", None), "_pool", None) or []
    return [p.pid for p in processes if getattr(p, "pid", None)]


def setup(app: Celery) -> None:
    """Connect the worker's life-cycle handlers for ``app`` (``worker.tasks.create_app`` calls it)."""

    @worker_ready.connect(weak=False)
    def _start_reaper(sender: Any = None, **_: Any) -> None:
        _consumer[:] = [sender]
        _main_pid[0] = os.getpid()
        settings = app.conf.lodestar_settings
        store = TaskStore.from_settings(settings, retry_seconds=settings.redis_retry_seconds)
        consumed = set(app.amqp.queues.consume_from or {})
        reaper = Reaper(Dispatcher(app, store), f"{os.uname().nodename}:{os.getpid()}",
                        kinds=[kind for kind in KINDS if kind in consumed])
        reaper.start()
        _reaper.append(reaper)

    @worker_shutting_down.connect(weak=False)
    def _stopping(sig: str = "", how: str = "", exitcode: int = 0, **_: Any) -> None:
        request_stop()
        for reaper in _reaper:
            reaper.stop()
        # SIGTERM to the main process only (systemd KillMode=mixed): tell the pool children, which run the tasks
        for pid in [pid for consumer in _consumer for pid in pool_children(consumer)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    @worker_process_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        for hook in _close_hooks:
            try:
                hook()
            except Exception:  # shutting down: close the others anyway
                log.exception("closing %s failed", hook)
