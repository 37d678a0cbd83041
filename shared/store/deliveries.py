"""The webhook outbox: deliveries waiting to be sent, each recorded before anyone tries to send it.

A terminal event's delivery is added by the same atomic write that ends the task (``apply.lua``); other events'
(``task.running``, ``task.paused`` for tasks with ``webhook_events: all``, and redeliveries) by :meth:`add`. Each
delivery is a hash (``Keys.delivery``: task_id, tenant, event, attempt) and an entry in ``Keys.deliveries`` scored
by when it is due. The reaper :meth:`hand` s due deliveries out (a token each, sent along in the Celery message);
a sender :meth:`take` s one (its due time becomes the end of the sender's claim), then either :meth:`done` (it is
gone) or :meth:`retry` (due again after a backoff). A sender that dies leaves it due when its claim ends, and the
reaper hands it out again: at least once, with the same delivery id every time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import cast

import redis

from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: its id (the ``Lodestar-Delivery`` header), the task, the tenant whose secret signs
    it, the event name ("task.completed" ...) and the number of the attempt about to be made (1 first)."""

    delivery_id: str
    task_id: str
    tenant: str
    event: str
    attempt: int


def new_delivery_id() -> str:
    """A fresh delivery id: "dlv_" + 22 URL-safe characters."""
    return "dlv_" + secrets.token_urlsafe(16)


class Deliveries:
    """The webhook outbox in Redis. Reached as ``TaskStore.deliveries``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: ``task_retention`` (how long an unsent delivery is kept at most).
        scripts: the store's registered scripts.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, scripts: Scripts):
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._scripts = scripts

    def add(self, task_id: str, tenant: str, event: str, due_ms: int) -> str:
        """Record a delivery of ``event`` for the task, due at ``due_ms``; returns its id."""
        delivery_id = new_delivery_id()
        key = self._keys.delivery(delivery_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"task_id": task_id, "tenant": tenant, "event": event, "attempt": 1})
        pipe.expire(key, self._settings.task_retention)
        pipe.zadd(self._keys.deliveries, {delivery_id: due_ms})
        pipe.execute()
        return delivery_id

    def take(self, delivery_id: str, now_ms: int, claim_ms: int, token: str = "") -> Delivery | None:
        """Claim a delivery for ``claim_ms``: when it is due, or ``token`` is the one :meth:`hand` gave it out
        with. None when it is gone, or another sender holds it."""
        raw = cast(list[bytes], self._scripts.take_delivery(
            keys=[self._keys.deliveries, self._keys.delivery(delivery_id)],
            args=[delivery_id, now_ms, claim_ms, token]))
        if not raw:
            return None
        fields = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw), 2)}
        if "task_id" not in fields:  # not a delivery we wrote
            self.done(delivery_id)
            return None
        return Delivery(delivery_id, fields["task_id"], fields["tenant"], fields["event"], int(fields["attempt"]))

    def done(self, delivery_id: str) -> None:
        """The delivery succeeded, or was given up: forget it."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._keys.deliveries, delivery_id)
        pipe.delete(self._keys.delivery(delivery_id))
        pipe.execute()

    def retry(self, delivery_id: str, attempt: int, due_ms: int) -> None:
        """The delivery failed: attempt number ``attempt`` is due at ``due_ms``."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._keys.delivery(delivery_id), "attempt", attempt)
        pipe.zadd(self._keys.deliveries, {delivery_id: due_ms})
        pipe.execute()

    def due(self, before_ms: int, limit: int = 500) -> list[str]:
        """Ids of deliveries due before ``before_ms`` (their senders' claims ended), oldest first."""
        ids = cast(list[bytes], self._redis.zrangebyscore(self._keys.deliveries, "-inf", before_ms, start=0,
                                                           num=limit))
        return [i.decode() for i in ids]

    def hand(self, delivery_ids: list[str], due_ms: int) -> dict[str, str]:
        """Give due deliveries out (the reaper): each gets a fresh token that lets the sender it is handed to take
        it, and is due again at ``due_ms`` if that sender never does. Returns ``{delivery id: token}``."""
        tokens = {delivery_id: secrets.token_hex(8) for delivery_id in delivery_ids}
        if not tokens:
            return {}
        pairs = [part for item in tokens.items() for part in item]
        handed = cast(list[bytes], self._scripts.hand_deliveries(keys=[self._keys.deliveries],
                                                                 args=[due_ms, self._keys.prefix, *pairs]))
        return {i.decode(): tokens[i.decode()] for i in handed}

    def pending(self) -> int:
        """Deliveries not sent yet (due or in flight)."""
        return int(cast(int, self._redis.zcard(self._keys.deliveries)))
