"""The Celery app both sides share: Redis broker, one queue per kind, priorities that work on Redis.

The API only *sends* ``lodestar.run_task`` by name (``enqueue``); the task body lives in ``worker/tasks.py``.
Settings follow STACK-NOTES: on the Redis transport priority needs ``queue_order_strategy="priority"``; 0 is served
first; ``task_default_priority`` keeps unprioritised messages from jumping the queue; prefetch 1 with late acks
keeps a busy worker from hoarding low-priority messages.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Queue

from shared.settings import Settings
from shared.states import PRIORITIES
from shared.store import TaskStore

log = logging.getLogger(__name__)

RUN_TASK = "lodestar.run_task"
QUEUES = ("browser", "desktop", "webhooks")
"""One Celery queue per task ``kind``, so worker pools can specialise (``lodestar worker --kind desktop``), and one
for webhook deliveries, which every worker also serves."""


def make_celery(settings: Settings) -> Celery:
    """A Celery app on ``settings.redis_url`` configured for agent tasks (long, late-acked, prioritised)."""
    app = Celery("lodestar", broker=settings.redis_url)
    transport = {
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
        "visibility_timeout": settings.visibility_timeout,
    }
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="browser",
        task_default_priority=PRIORITIES["normal"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue(app: Celery, task_id: str, kind: str, priority: str, producer: Any = None) -> None:
    """Put ``task_id`` on the ``kind`` queue at ``priority`` ("high" | "normal" | "low").

    The Celery message id is the task id, so Flower and Lodestar show the same id. ``producer`` reuses a kombu
    producer (batches); by default Celery takes one from its pool.

    Raises:
        KeyError: unknown priority.
        kombu.exceptions.OperationalError: the broker is unreachable.
    """
    app.send_task(RUN_TASK, args=[task_id], task_id=task_id, queue=kind, priority=PRIORITIES[priority],
                  producer=producer)


def release_deferred(app: Celery, store: TaskStore, tenant: str) -> int:
    """Enqueue the tenant's deferred tasks that now fit under its running limit; returns how many.

    The ids are popped atomically (so two releases never send the same one); any that cannot be enqueued (the
    broker is down) go back to the front of the list for the next release.
    """
    ids = store.next_deferred(tenant)
    for i, task_id in enumerate(ids):
        record = store.get(task_id)
        if record is None:
            continue
        try:
            enqueue(app, task_id, record["kind"], record.get("priority") or "normal")
        except Exception:
            store.return_deferred(tenant, ids[i:])
            raise
    return len(ids)


def task_ended(app: Celery, store: TaskStore, task_id: str, tenant: str | None) -> None:
    """Everything that follows a task's end wherever it ended (worker or API): its webhook, and the start of a
    task its tenant's running limit held back. Errors are logged, never raised."""
    from shared import webhooks

    webhooks.schedule(app, store, task_id)
    if tenant:
        try:
            release_deferred(app, store, tenant)
        except Exception as exc:  # the broker is down: the ids stay deferred until the next end or claim
            log.error("releasing deferred tasks of %s failed: %s", tenant, exc)
