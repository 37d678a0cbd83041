"""The Celery side of a worker: the ``lodestar.run_task`` and ``lodestar.deliver_webhook`` tasks and the per-process
runtime they use.

Run with ``lodestar worker`` (or ``celery -A worker.tasks worker -Q browser``). The Celery app is built by
:func:`create_app` from the settings when a worker starts (not when this module is imported). Each worker process
(slot) owns one Chromium, started on its first task and reused, and gives each task a fresh browser context; a
desktop worker (``--kind desktop``) process owns one Xvfb display instead (``worker/desktop/``).

A task is run at most once at a time: the worker first claims it in Redis (``TaskStore.claim``), which sets a lease
that :class:`worker.lease.LeaseKeeper` renews. A message delivered again (visibility timeout, requeue after a lost
worker) finds the lease held and is retried later, or finds the lease expired and restarts the task, up to
``max_attempts`` times.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown
from redis.exceptions import RedisError

from shared import webhooks
from shared.queue import RUN_TASK, make_celery
from shared.settings import Settings, load_settings
from shared.states import ExitCode
from shared.store import TaskStore
from worker.browser import BrowserHost
from worker.desktop import DesktopHost
from worker.lease import LeaseKeeper
from worker.loop import Outcome
from worker.runner import Host, Runtime, end, run_claimed

log = logging.getLogger(__name__)

_app: Celery | None = None
_runtime: Runtime | None = None


def create_app(settings: Settings | None = None) -> Celery:
    """The worker's Celery app: ``shared.queue.make_celery`` with the task bodies below registered on it.

    The first app created is this process's (:func:`runtime` serves its tasks).
    """
    global _app
    app = make_celery(settings or load_settings())
    app.task(name=RUN_TASK, bind=True, max_retries=None, acks_late=True)(run_task)
    app.task(name=webhooks.DELIVER_WEBHOOK, bind=True, max_retries=None, acks_late=True)(deliver_webhook)
    if _app is None:
        _app = app
    return app


def __getattr__(name: str) -> Any:
    """``worker.tasks.app``: the process's app, created on first use (what ``celery -A worker.tasks`` looks for)."""
    if name == "app":
        return _app or create_app()
    raise AttributeError(name)


def runtime(app: Celery) -> Runtime:
    """This process's runtime, created on first use (after the prefork fork, so nothing is shared across
    children)."""
    global _runtime
    if _runtime is None or _runtime.worker_id.rsplit(":", 1)[1] != str(os.getpid()):
        settings: Settings = app.conf.lodestar_settings
        hosts: dict[str, Host] = {"browser": BrowserHost(settings), "desktop": DesktopHost(settings)}
        _runtime = Runtime(app, settings, TaskStore.from_settings(settings), hosts,
                           f"{socket.gethostname()}:{os.getpid()}")
    return _runtime


@worker_process_shutdown.connect
def _close_hosts(**_: Any) -> None:
    if _runtime is not None:
        for host in _runtime.hosts.values():
            try:
                host.close()
            except Exception:  # shutting down: close the others anyway
                log.exception("closing %s failed", type(host).__name__)


def run_task(self: Any, task_id: str) -> str:
    """``lodestar.run_task``: claim and run one agent task to its end. Returns the claim outcome (for Flower).

    A Redis error anywhere on the way (a failover, a dropped connection) retries the message after ``lease_ttl``
    instead of acknowledging it, so no task is left queued or running with nobody to finish it; the claim's
    attempt limit bounds the retries of a task that was already running.
    """
    rt = runtime(self.app)
    try:
        return _claim_and_run(self, rt, task_id)
    except RedisError as exc:
        log.warning("Redis failed while running %s (%s); retrying in %s s", task_id, exc, rt.settings.lease_ttl)
        raise self.retry(countdown=rt.settings.lease_ttl, max_retries=50, exc=exc) from exc


def _claim_and_run(self: Any, rt: Runtime, task_id: str) -> str:
    outcome, status, attempt = rt.store.claim(task_id, rt.worker_id)
    if outcome in ("ended", "missing"):
        log.info("task %s is %s; nothing to do", task_id, status or "missing")
        return outcome
    if outcome == "deferred":
        log.info("task %s waits: its tenant is at its running limit", task_id)
        return outcome
    if outcome == "leased":
        raise self.retry(countdown=rt.settings.lease_ttl)
    if outcome == "lost":
        end(rt, task_id, Outcome(ExitCode.WORKER_LOST, error=f"its worker was lost {attempt - 1} times"))
        return outcome
    if outcome == "started":
        webhooks.schedule(rt.app, rt.store, task_id, "task.running")
    keeper = LeaseKeeper(rt.store, task_id, rt.worker_id)
    keeper.start()
    try:
        run_claimed(rt, task_id)
    finally:
        keeper.stop()
        rt.store.release_lease(task_id, rt.worker_id)
    return outcome


def deliver_webhook(self: Any, task_id: str, delivery_id: str, event: str, attempt: int = 1) -> bool:
    """``lodestar.deliver_webhook``: deliver one webhook event; retried with backoff until a 2xx or
    ``webhook_max_attempts``."""
    rt = runtime(self.app)
    task = rt.store.get(task_id)
    if task is None:
        return False
    secret = rt.store.tenants.webhook_secret(task.tenant)
    result = webhooks.deliver(rt.store, secret, task_id, delivery_id, event, attempt)
    if not result.ok and not (result.error or "").startswith("refused") and attempt < rt.settings.webhook_max_attempts:
        raise self.retry(args=[task_id, delivery_id, event, attempt + 1], countdown=webhooks.backoff(attempt))
    return result.ok
