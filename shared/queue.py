"""The Celery app both sides share, and the dispatcher that puts run messages on it.

The broker is Redis (``LODESTAR_REDIS_URL``, the default) or RabbitMQ (``LODESTAR_BROKER_URL=amqp://...``); Redis is
the store in both cases. One queue per kind of environment (``browser``, ``desktop``) and one for webhook deliveries.
Priorities: on the Redis transport they need ``queue_order_strategy="priority"`` and 0 is served first; on RabbitMQ
queues are declared with ``x-max-priority`` and a higher number is served first (STACK-NOTES); :func:`priority_of`
maps ``high`` / ``normal`` / ``low`` for the broker in use. Prefetch 1 with late acks keeps a busy worker from
hoarding messages. A run message is only a wake-up call: the task's record, its lease and the reaper decide who
runs it (``docs/reliability.md``), so a message delivered twice or lost with a dead worker does no harm.

The API only *sends* ``lodestar.run_task`` by name; the task body lives in ``worker/tasks.py``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.utils.json import dumps

from shared.settings import Settings
from shared.store import TaskStore
from shared.task import Task

log = logging.getLogger(__name__)

RUN_TASK = "lodestar.run_task"
DELIVER_WEBHOOK = "lodestar.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"
QUEUES = ("browser", "desktop", WEBHOOK_QUEUE)
"""One Celery queue per task ``kind``, so worker pools can specialise (``lodestar worker --kind desktop``), and one
for webhook deliveries, which every worker also serves."""

REDIS_PRIORITIES: dict[str, int] = {"high": 0, "normal": 4, "low": 9}
"""API priority -> kombu Redis priority (0 is served first)."""
AMQP_PRIORITIES: dict[str, int] = {"high": 9, "normal": 5, "low": 0, "requeued": 9}
"""API priority -> RabbitMQ message priority (the queues' ``x-max-priority`` is 9; higher is served first). A
requeued task goes at the highest priority: it already waited its turn once."""
AMQP_MAX_PRIORITY = 9


def broker_url(settings: Settings) -> str:
    """The Celery broker URL: ``broker_url``, else ``redis_url``."""
    return settings.broker_url or settings.redis_url


def uses_amqp(settings: Settings) -> bool:
    """The broker is RabbitMQ (an ``amqp://`` or ``amqps://`` URL)."""
    return broker_url(settings).startswith(("amqp://", "amqps://", "pyamqp://"))


def broker_is_store(settings: Settings) -> bool:
    """The broker is the store's own Redis database: run messages can be written in the same MULTI/EXEC as the
    task records (``RunTaskMessages``)."""
    return broker_url(settings) == settings.redis_url


def priority_of(settings: Settings, priority: str) -> int:
    """The broker's priority number for an API priority ("high" | "normal" | "low", or "requeued").

    Raises:
        KeyError: an unknown priority.
    """
    if uses_amqp(settings):
        return AMQP_PRIORITIES[priority]
    return REDIS_PRIORITIES["high" if priority == "requeued" else priority]


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the broker of ``settings``, configured for agent tasks (long, late-acked, prioritised); the
    settings themselves are kept in ``app.conf.lodestar_settings``."""
    app = Celery("lodestar", broker=broker_url(settings))
    if uses_amqp(settings):
        queues = [Queue(name, routing_key=name, queue_arguments={"x-max-priority": AMQP_MAX_PRIORITY})
                  for name in QUEUES]
        transport: dict[str, Any] = {}
    else:
        queues = [Queue(name) for name in QUEUES]
        transport = {"queue_order_strategy": "priority", "priority_steps": list(range(10)), "sep": ":",
                     "visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for its broker to come back; it never gives up
        task_queues=queues,
        task_default_queue="browser",
        task_default_priority=priority_of(settings, "normal"),
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
        worker_cancel_long_running_tasks_on_connection_loss=False,
        lodestar_settings=settings,  # what the worker's tasks run with (worker/tasks.py)
    )
    return app


def enqueue(app: Celery, task_id: str, kind: str, priority: str, producer: Any = None) -> None:
    """Put ``task_id`` on the ``kind`` queue at ``priority`` ("high" | "normal" | "low" | "requeued") with
    ``send_task``. The Celery message id is the task id, so Flower and Lodestar show the same id. ``producer``
    reuses a kombu producer (batches); by default Celery takes one from its pool.

    Raises:
        KeyError: unknown priority.
        kombu.exceptions.OperationalError: the broker is unreachable.
    """
    app.send_task(RUN_TASK, args=[task_id], task_id=task_id, queue=kind,
                  priority=priority_of(app.conf.lodestar_settings, priority), producer=producer)


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
                                priority=priority_of(self._app.conf.lodestar_settings, priority), connection=conn,
                                retry=False)
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


class Dispatcher:
    """Sends run messages for tasks that are already stored: requeued ones, resumed ones, deferred ones released,
    and (on RabbitMQ, or a Redis broker that is not the store's database) newly submitted ones.

    Each task whose message is due sits in the store's dispatch outbox until its message is sent; :meth:`dispatch`
    sends and takes them out, and the reaper does it for any left behind (a sender that died, a broker that was
    down). A task whose message goes out twice is harmless (the claim takes it once). Thread-safe.

    Args:
        app: the Celery app (``make_celery``).
        store: the task store.
    """

    def __init__(self, app: Celery, store: TaskStore):
        self.app = app
        self.store = store
        self.settings: Settings = app.conf.lodestar_settings
        self.messages = RunTaskMessages(app) if broker_is_store(self.settings) else None
        """The message builder for submits that write run messages with the records (None: the broker is not the
        store's Redis; submits go through the dispatch outbox and :meth:`send_new`)."""

    def send(self, tasks: Sequence[Task], front: bool = False) -> None:
        """Publish the run message of each task, at the back of its priority level or, with ``front``, where it
        is served next (Redis: the consuming end of its list; RabbitMQ: the highest priority).

        Raises:
            Exception: the broker's error (kombu's ``OperationalError``, a Redis error) when it is unreachable.
        """
        if self.messages is not None:
            self.store.push_messages([self.messages.message(t.task_id, t.kind, t.priority) for t in tasks], front)
            return
        with self.app.producer_or_acquire() as producer:
            for task in tasks:
                enqueue(self.app, task.task_id, task.kind, "requeued" if front else task.priority, producer)

    def send_new(self, tasks: Sequence[Task]) -> None:
        """Send the run messages of newly submitted tasks (stored in the dispatch outbox by ``TaskStore.submit``)
        at the back of their priority levels, then take them out of the outbox. Never raises: on a broker error
        they stay in the outbox and the reaper sends them."""
        try:
            for start in range(0, len(tasks), 1000):
                chunk = tasks[start:start + 1000]
                self.send(chunk)
                self.store.recovery.dispatched([t.task_id for t in chunk])
        except Exception as exc:
            log.warning("sending run messages failed (%s); the reaper will send them", exc)

    def dispatch(self, task_ids: Sequence[str]) -> int:
        """Send the run messages of tasks in the dispatch outbox (those still queued; others just leave it),
        each to the front of its queue; returns how many were sent. Never raises: on a broker or Redis error the
        ids stay in the outbox for the reaper (logged)."""
        if not task_ids:
            return 0
        try:
            tasks = [t for t in (self.store.get(i) for i in task_ids) if t is not None and t.status == "queued"]
            self.send(tasks, front=True)
            self.store.recovery.dispatched(list(task_ids))
            return len(tasks)
        except Exception as exc:
            log.warning("sending %d run messages failed (%s); the reaper will send them", len(task_ids), exc)
            return 0


def release_deferred(dispatcher: Dispatcher, tenant: str) -> int:
    """Start the tenant's deferred tasks that now fit under its running limit; returns how many were released.
    The ids move to the dispatch outbox atomically, so a failure here leaves them to the reaper."""
    return dispatcher.dispatch(dispatcher.store.next_deferred(tenant))


def task_ended(dispatcher: Dispatcher, task: Task, delivery_id: str | None) -> None:
    """What follows a task's end wherever it ended (worker or API): the delivery of its webhook (recorded in the
    outbox by the same write that ended it; sent now) and the start of tasks its tenant's running limit held
    back. Errors are logged, never raised: the reaper catches up."""
    if delivery_id and task.webhook_url:
        send_delivery(dispatcher.app, delivery_id)
    try:
        release_deferred(dispatcher, task.tenant)
    except Exception as exc:  # Redis down: the reaper releases them
        log.error("releasing deferred tasks of %s failed: %s", task.tenant, exc)


def send_delivery(app: Celery, delivery_id: str, token: str = "") -> bool:
    """Ask a worker to send a webhook delivery from the outbox (``lodestar.deliver_webhook``); False when the broker
    is unreachable (the reaper sends it later)."""
    try:
        app.send_task(DELIVER_WEBHOOK, args=[delivery_id, token], queue=WEBHOOK_QUEUE)
        return True
    except Exception as exc:
        log.warning("could not queue webhook delivery %s (%s); the reaper will", delivery_id, exc)
        return False
