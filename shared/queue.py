"""The Celery app both sides share: Redis broker, one queue per kind, priorities that work on Redis.

The API only *sends* ``lodestar.run_task`` by name (``enqueue``); the task body lives in ``worker/tasks.py``.
Settings follow STACK-NOTES: on the Redis transport priority needs ``queue_order_strategy="priority"``; 0 is served
first; ``task_default_priority`` keeps unprioritised messages from jumping the queue; prefetch 1 with late acks
keeps a busy worker from hoarding low-priority messages.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.utils.json import dumps

from shared.settings import Settings
from shared.states import PRIORITIES
from shared.store import TaskStore

log = logging.getLogger(__name__)

RUN_TASK = "lodestar.run_task"
QUEUES = ("browser", "desktop", "webhooks")
"""One Celery queue per task ``kind``, so worker pools can specialise (``lodestar worker --kind desktop``), and one
for webhook deliveries, which every worker also serves."""


def make_celery(settings: Settings) -> Celery:
    """A Celery app on ``settings.redis_url`` configured for agent tasks (long, late-acked, prioritised); the
    settings themselves are kept in ``app.conf.lodestar_settings``."""
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
        # no task-sent events: the API writes most messages itself (RunTaskMessages); Flower shows a task from
        # the moment a worker receives it, and queued tasks are listed by Lodestar's own API
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        lodestar_settings=settings,  # what the worker's tasks run with (worker/tasks.py)
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


class RunTaskMessages:
    """The broker messages of ``lodestar.run_task``, ready to LPUSH in the same Redis pipeline as the task records.

    ``Celery.send_task`` spends ~0.3 ms of Python per message (protocol-2 headers, kombu's envelope, JSON, base64)
    and a round trip of its own. Every run_task message differs only in the task id, so Celery builds one
    message per (kind, priority) here, with a placeholder id, through the real ``send_task`` and kombu Redis
    channel (only the channel's final LPUSH is intercepted); each task's message is that text with the id, the
    base64 body and a fresh ``delivery_tag`` filled in. The result is byte for byte what ``send_task`` would
    have pushed (``tests/test_task_management.py`` compares them, and every end-to-end test consumes them with a
    real Celery worker). Message format: Celery's task message protocol 2 inside kombu's Redis envelope.
    Thread-safe.
    """

    _ID = "task_LodestarIdPlaceholder00"
    _TAG = "LodestarTagPlaceholder"
    _BODY = "LodestarBodyPlaceholder"

    def __init__(self, app: Celery):
        self._app = app
        self._templates: dict[tuple[str, str], tuple[str, list[str], str, str]] = {}
        self._lock = threading.Lock()

    def message(self, task_id: str, kind: str, priority: str) -> tuple[str, str]:
        """``(Redis list key, message text)`` of the run_task message for ``task_id``.

        Raises:
            KeyError: unknown priority.
            kombu.exceptions.OperationalError: the broker is unreachable (only when a template is first built).
        """
        key, parts, body_head, body_tail = self._template(kind, priority)
        values = {self._ID: task_id, self._TAG: str(uuid.uuid4()),
                  self._BODY: base64.b64encode(f"{body_head}{task_id}{body_tail}".encode()).decode()}
        return key, "".join(values.get(part, part) for part in parts)

    def _template(self, kind: str, priority: str) -> tuple[str, list[str], str, str]:
        template = self._templates.get((kind, priority))
        if template is None:
            with self._lock:
                template = self._templates.get((kind, priority)) or self._build(kind, priority)
                self._templates[(kind, priority)] = template
        return template

    def _build(self, kind: str, priority: str) -> tuple[str, list[str], str, str]:
        captured: dict[str, Any] = {}
        with self._app.connection_for_write() as conn:
            channel: Any = conn.default_channel

            def capture(queue: str, message: dict[str, Any], **_: Any) -> None:
                captured["key"] = channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False))
                captured["message"] = message

            channel._put = capture  # this connection is ours alone and is closed below
            # retry=False: a retry would publish on a fresh channel whose _put is the real one
            self._app.send_task(RUN_TASK, args=[self._ID], task_id=self._ID, queue=kind,
                                priority=PRIORITIES[priority], connection=conn, retry=False)
        message = captured["message"]
        if message["properties"].get("body_encoding") != "base64":
            raise RuntimeError(f"unexpected kombu Redis envelope: {message['properties']}")
        body_head, body_tail = base64.b64decode(message["body"]).decode().split(self._ID)
        message["body"] = self._BODY
        message["properties"]["delivery_tag"] = self._TAG
        text = dumps(message)
        parts = [p for p in re.split(f"({self._ID}|{self._TAG}|{self._BODY})", text) if p]
        if json.loads(text)["headers"]["id"] != self._ID:
            raise RuntimeError("unexpected Celery message layout")
        return captured["key"], parts, body_head, body_tail


def release_deferred(app: Celery, store: TaskStore, tenant: str) -> int:
    """Enqueue the tenant's deferred tasks that now fit under its running limit; returns how many.

    The ids are popped atomically (so two releases never send the same one); any that cannot be enqueued (the
    broker is down) go back to the front of the list for the next release.
    """
    ids = store.next_deferred(tenant)
    for i, task_id in enumerate(ids):
        task = store.get(task_id)
        if task is None:
            continue
        try:
            enqueue(app, task_id, task.kind, task.priority)
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
