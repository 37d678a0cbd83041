"""Queue lengths per priority in Flower (``lodestar flower``).

Flower's Broker page and its ``GET /api/queues/length`` show one row per Celery queue: on Redis the sum of kombu's
priority lists, on RabbitMQ what the management API says of the queue (which does not count by priority). Lodestar
knows more: every queued task sits in its kind's queue in the store, scored by priority band
(``shared/store/queueinfo.py``). :func:`install` adds those counts (the figures of ``lodestar_queue_depth``: tasks
waiting for a worker, deferred ones left out):

- on the Broker page, one row per priority after each Lodestar queue's own row, named ``"<queue> [<priority>]"``;
- in ``GET /api/queues/length``, a ``priorities`` field on each Lodestar queue's own row (so that a script summing
  ``messages`` over the rows counts each message once)::

    {"active_queues": [{"name": "browser", "messages": 7, "priorities": {"high": 2, "normal": 5, "low": 0}},
                       {"name": "desktop", "messages": 1, "priorities": {"high": 0, "normal": 0, "low": 1}},
                       {"name": "webhooks", "messages": 0}]}

A Lodestar queue the broker gave no row for (RabbitMQ without its management API) gets one with only its name and
``priorities``. Flower has no plug-in point for this: :func:`install` wraps ``flower.views.BaseHandler.get_broker``
(Flower 2.x), which both the page and the API call, and tells the two apart by the handler's class.
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
    """The Broker page's row for ``queue``'s tasks at ``priority`` (Flower's queue row keys)."""
    return {"name": f"{queue} [{priority}]", "messages": messages}


class PriorityQueues:
    """A Flower broker (``flower.utils.broker.Broker``: ``await queues(names) -> [row]``) whose Lodestar queues
    gain their counts per priority: as rows of their own (``as_rows``, the Broker page) or as a ``priorities``
    field of the queue's row (the API).

    Args:
        broker: Flower's broker object for the request.
        store: the Lodestar store the counts come from.
        as_rows: rows of their own (True) or a field (False).
    """

    def __init__(self, broker: Any, store: TaskStore, as_rows: bool):
        self._broker, self._store, self._as_rows = broker, store, as_rows

    async def queues(self, names: list[str]) -> list[dict[str, Any]]:
        """Flower's rows for ``names`` (in its order) with the counts per priority of each Lodestar queue, which
        gets a row even when the broker did not answer for it (RabbitMQ without its management API).

        Raises:
            whatever Flower's broker raises (Flower's handlers catch it), never a Redis error of the store: the
            counts per priority are then left out, and logged.
        """
        rows = [dict(row) for row in await self._broker.queues(names)]
        try:
            depth = await asyncio.to_thread(self._store.metrics.queue_depth)
        except Exception as exc:  # redis.RedisError, or a store that cannot be reached: Flower's rows still show
            log.warning("queue lengths per priority unavailable: %s", exc)
            return rows
        named = {row.get("name"): row for row in rows}
        for name in names:  # a Lodestar queue the broker said nothing of still gets its row
            if name in KINDS and name not in named:
                named[name] = {"name": name}
                rows.append(named[name])
        out: list[dict[str, Any]] = []
        for row in rows:
            out.append(row)
            queue = str(row.get("name"))
            if queue not in KINDS:
                continue
            counts = {p: depth.get((queue, p), 0) for p in PRIORITIES}
            if self._as_rows:
                out.extend(priority_row(queue, p, n) for p, n in counts.items())
            else:
                row["priorities"] = counts
        return out


def install(store: TaskStore) -> None:
    """Make Flower's handlers (Broker page, ``/api/queues/length``) use :class:`PriorityQueues` over ``store``.
    Call before Flower starts, in its process.

    Raises:
        ImportError: Flower is not installed (the ``flower`` extra).
    """
    from flower.views import BaseHandler
    from flower.views.broker import BrokerView

    original = BaseHandler.get_broker
    if getattr(original, "lodestar_priorities", False):
        return

    def get_broker(self: Any) -> PriorityQueues:
        return PriorityQueues(original(self), store, as_rows=isinstance(self, BrokerView))

    get_broker.lodestar_priorities = True  # type: ignore[attr-defined]
    BaseHandler.get_broker = get_broker
