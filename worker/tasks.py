"""The Celery side of a worker: the ``lodestar.run_task`` and ``lodestar.deliver_webhook`` tasks and the per-process
runtime they use.

Run with ``lodestar worker`` (or ``celery -A worker.tasks worker -Q browser``). The Celery app is built by
:func:`create_app` from the settings when a worker starts (not when this module is imported). Each worker process
(slot) owns one Chromium, started on its first task and reused, and gives each task a fresh browser context; a
desktop worker (``--kind desktop``) process owns one Xvfb display instead (``worker/desktop/``).

A run message only wakes a worker up: the worker claims the task in Redis (``TaskStore.claim``), which sets a lease
that :class:`worker.lease.LeaseKeeper` renews while it runs (``worker/runner.py``). A message for a task that is
not queued (another worker holds it, it ended, its worker was lost and the reaper will requeue it) is dropped.
Webhook deliveries come from the store's outbox (``shared/webhooks.py``).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery
from celery.exceptions import Reject
from celery.signals import after_setup_logger, after_setup_task_logger
from redis.exceptions import RedisError

from shared import logs, webhooks
from shared.queue import DELIVER_WEBHOOK, RUN_TASK, Dispatcher, make_celery
from shared.settings import Settings, load_settings
from shared.store import TaskStore, now_ms
from worker import lifecycle, metrics
from worker.browser import BrowserHost
from worker.desktop import DesktopHost
from worker.runner import Host, Runtime, run_claimed

log = logging.getLogger(__name__)

_app: Celery | None = None
_runtime: Runtime | None = None


def create_app(settings: Settings | None = None) -> Celery:
    """The worker's Celery app: ``shared.queue.make_celery`` with the task bodies below registered on it.

    The first app created is this process's (:func:`runtime` serves its tasks).
    """
    global _app
    app = make_celery(settings or load_settings())
    app.task(name=RUN_TASK, bind=True, acks_late=True)(run_task)
    app.task(name=DELIVER_WEBHOOK, bind=True, acks_late=True)(deliver_webhook)
    if _app is None:
        _app = app
        lifecycle.setup(app)
        metrics.setup(app, app.conf.lodestar_settings)
        log_format = logs.check_format(app.conf.lodestar_settings.log_format)

        @after_setup_logger.connect(weak=False)
        @after_setup_task_logger.connect(weak=False)
        def _log_lines(logger: logging.Logger | None = None, **_: Any) -> None:
            if logger is not None:
                logs.apply(log_format, logger.handlers)
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
        store = TaskStore.from_settings(settings, retry_seconds=settings.redis_retry_seconds)
        _runtime = Runtime(Dispatcher(app, store), settings, store, hosts, f"{socket.gethostname()}:{os.getpid()}")
        lifecycle.install_stop_handler()
        for host in hosts.values():
            lifecycle.on_close(host.close)
    return _runtime


def run_task(self: Any, task_id: str) -> dict[str, Any]:
    """``lodestar.run_task``: claim the task and run it to one of its ends; returns what happened, for Flower's
    result column: ``{"outcome", "task_id", "kind", "model", "agent", "tenant", "attempt"}``, outcome the claim's
    when the message is dropped (then only the task id is known), else the runner's ("ended", "handed back", ...);
    model is the task's model (None for an offline agent), agent its agent_type or model.

    A Redis error before the claim retries the message after ``lease_ttl`` (nothing was taken); from the claim on,
    the lease and the reaper own the task, so the message is never retried: a task whose worker is cut off from
    Redis is requeued by the reaper once its lease expires.
    """
    rt = runtime(self.app)
    with logs.bound(task_id=task_id, worker=rt.worker_id):
        outcome = _run_task(self, rt, task_id)
        seen = logs.current()
    return {"outcome": outcome,
            **{k: seen.get(k) for k in ("task_id", "kind", "model", "agent", "tenant", "attempt")}}


def _run_task(self: Any, rt: Runtime, task_id: str) -> str:
    try:
        outcome, status, attempt = rt.store.claim(task_id, rt.worker_id)
    except RedisError as exc:
        log.warning("Redis failed while claiming %s (%s); retrying in %s s", task_id, exc, rt.settings.lease_ttl)
        raise self.retry(countdown=rt.settings.lease_ttl, max_retries=50, exc=exc) from exc
    logs.bind(attempt=attempt)
    if outcome not in ("started", "held"):
        log.info("task %s: %s (%s); this message is dropped", task_id, outcome, status or "no record")
        return outcome
    if outcome == "started":
        task = rt.store.get(task_id)
        if task is not None:
            if attempt == 1 and task.started_at:
                metrics.observe_queue_wait(task.kind, task.priority, task.started_at - task.created_at)
            webhooks.schedule(rt.dispatcher, task, "task.running")
    with metrics.busy():
        ended = run_claimed(rt, task_id)
    if ended == "redis":  # Redis stayed away: keep the message (the lease, if it survived, makes the reaper act)
        raise Reject("Redis unreachable while the task ran", requeue=True)
    return ended


def deliver_webhook(self: Any, delivery_id: str, token: str = "") -> bool:
    """``lodestar.deliver_webhook``: send one webhook delivery from the outbox (when it is due, or ``token`` is the
    reaper's for it). A failed attempt is due again after a backoff, until ``webhook_max_attempts``; a refused URL
    (a private address) is not retried."""
    rt = runtime(self.app)
    with logs.bound(worker=rt.worker_id):
        return _deliver_webhook(rt, delivery_id, token)


def _deliver_webhook(rt: Runtime, delivery_id: str, token: str) -> bool:
    claim_ms = int((rt.settings.webhook_timeout * 2 + 5) * 1000)  # its POST times out well before
    delivery = rt.store.deliveries.take(delivery_id, now_ms(), claim_ms, token)
    if delivery is None:
        return False
    logs.bind(task_id=delivery.task_id, tenant=delivery.tenant)
    secret = rt.store.tenants.webhook_secret(delivery.tenant)
    result = webhooks.deliver(rt.store, secret, delivery)
    refused = (result.error or "").startswith("refused")
    if result.ok or refused or delivery.attempt >= rt.settings.webhook_max_attempts:
        rt.store.deliveries.done(delivery_id)
    else:
        rt.store.deliveries.retry(delivery_id, delivery.attempt + 1,
                                  now_ms() + webhooks.backoff(delivery.attempt) * 1000)
    return result.ok
