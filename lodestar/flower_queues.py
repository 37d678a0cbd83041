"""Queue lengths per priority in Flower (``lodestar flower``).

Flower's Broker page and its ``GET /api/queues/length`` show one row per Celery queue: on Redis the sum of kombu's
priority lists, on RabbitMQ what the management API says of the queue (which does not count by priority). Lodestar
knows more: every queued task sits in its kind's queue in the store, scored by priority band
(``shared/store/queueinfo.py``). :func:`install` makes Flower list, after each Lodestar queue's own row, one row
per priority, ``"<queue> [<priority>]"``, counted from the store (the figures of ``lodestar_queue_depth``: tasks
waiting for a worker, deferred ones left out)::

    {"active_queues": [{"name": "browser", "messages": 7},
                       {"name": "browser [high]", "messages": 2, "messages_ready": 2},
                       {"name": "browser [normal]", "messages": 5, "messages_ready": 5},
                       {"name": "browser [low]", "messages": 0, "messages_ready": 0}, ...]}

The broker's own rows are left as Flower made them. Flower has no plug-in point for this: :func:`install` wraps
``flower.views.BaseHandler.get_broker`` (Flower 2.x), which both the page and the API call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.store import TaskStore
from shared.store.queueinfo import QUEUE_BANDS
from shared.task import KINDS

log = logging.getLogger(__name__)

PRIORITIES = tuple(sorted(QUEUE_BANDS, key=QUEUE_BANDS.__getitem__))
"""The API's priorities, served first to last: high, normal, low."""


def priority_row(queue: str, priority: str, messages: int) -> dict[str, Any]:
    """The row Flower shows for ``queue``'s tasks at ``priority`` (Flower's queue row keys)."""
    return {"name": f"{queue} [{priority}]", "messages": messages, "messages_ready": messages}


class PriorityQueues:
    """A Flower broker (``flower.utils.broker.Broker``: ``await queues(names) -> [row]``) whose rows gain one per
    priority under each Lodestar queue.

    Args:
        broker: Flower's broker object for the request.
        store: the Lodestar store the counts come from.
    """

    def __init__(self, broker: Any, store: TaskStore):
        self._broker, self._store = broker, store

    async def queues(self, names: list[str]) -> list[dict[str, Any]]:
        """Flower's rows for ``names`` (in its order), each Lodestar queue's followed by its priority rows; a
        Lodestar queue the broker did not answer for (RabbitMQ without its management API) still gets them.

        Raises:
            whatever Flower's broker raises (Flower's handlers catch it), never a Redis error of the store: the
            priority rows are then left out, and logged.
        """
        rows = list(await self._broker.queues(names))
        try:
            depth = await asyncio.to_thread(self._store.metrics.queue_depth)
        except Exception as exc:  # redis.RedisError, or a store that cannot be reached: Flower's rows still show
            log.warning("queue lengths per priority unavailable: %s", exc)
            return rows
        out: list[dict[str, Any]] = []
        listed = set()
        for row in rows:
            out.append(row)
            name = row.get("name")
            if name in KINDS and name not in listed:
                listed.add(name)
                out.extend(priority_row(name, p, depth.get((name, p), 0)) for p in PRIORITIES)
        for name in names:
            if name in KINDS and name not in listed:
                listed.add(name)
                out.extend(priority_row(name, p, depth.get((name, p), 0)) for p in PRIORITIES)
        return out


def install(store: TaskStore) -> None:
    """Make Flower's handlers (Broker page, ``/api/queues/length``) use :class:`PriorityQueues` over ``store``.
    Call before Flower starts, in its process.

    Raises:
        ImportError: Flower is not installed (the ``flower`` extra).
    """
    from flower.views import BaseHandler

    original = BaseHandler.get_broker
    if getattr(original, "lodestar_priorities", False):
        return

    def get_broker(self: Any) -> PriorityQueues:
        return PriorityQueues(original(self), store)

    get_broker.lodestar_priorities = True  # type: ignore[attr-defined]
    BaseHandler.get_broker = get_broker
