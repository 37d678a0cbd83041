"""Webhooks: signed POSTs of a task's JSON to the URL given at start (or the tenant's default) when it ends.

Every delivery is first recorded in the store's outbox (``shared/store/deliveries.py``): a task's end in the same
atomic write that ends it, other events when they happen. A worker sends it (``lodestar.deliver_webhook`` on the
``webhooks`` queue, served by every worker); a failed attempt is due again after an exponential backoff (2, 4, 8 ...
s, at most 10 minutes apart) up to ``webhook_max_attempts``, and the reaper hands due deliveries to workers, also
those whose sender died. At least once, with the same ``Lodestar-Delivery`` id on every try. Every attempt is
recorded on the task (GET /agent/tasks/{id}/webhooks).

Request::

    POST <webhook_url>
    Content-Type: application/json
    Lodestar-Event: task.completed            (task.<status>)
    Lodestar-Delivery: dlv_<hex>              (the same for every retry of one delivery: deduplicate on it)
    Lodestar-Timestamp: 1795273812            (epoch seconds of this attempt)
    Lodestar-Signature: v1=<hex HMAC-SHA256 of "<timestamp>." + body, keyed by the tenant's webhook secret>

    {"event": "task.completed", "delivery_id": "dlv_...", "task": {<GET /agent/tasks/{id}>}}

Verification (the receiver's side; the secret is ``webhook_secret`` of GET /agent/tenant)::

    import hashlib, hmac, time
    def verify(secret: str, body: bytes, timestamp: str, signature: str, tolerance: int = 300) -> bool:
        expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature) and abs(time.time() - int(timestamp)) <= tolerance
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from shared.netguard import NetworkGuard
from shared.queue import Dispatcher, send_delivery
from shared.signing import UrlSigner
from shared.states import TERMINAL
from shared.store import Delivery, TaskStore, now, now_ms
from shared.task import Task

log = logging.getLogger(__name__)



def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 over ``"<timestamp>." + body`` keyed by ``secret``."""
    return "v1=" + hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, timestamp: str, signature: str, tolerance: int = 300) -> bool:
    """True when ``signature`` is ours for this body and timestamp, and the timestamp is within ``tolerance`` s."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt as recorded on the task."""

    delivery_id: str
    event: str
    url: str
    attempt: int
    ts: float
    ok: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0


def schedule(dispatcher: Dispatcher, task: Task, event: str | None = None, force: bool = False) -> str | None:
    """Record a delivery of the task's JSON in the outbox and ask a worker to send it, if the task has a webhook
    URL; returns the delivery id or None.

    ``event`` defaults to "task.<current status>". Non-terminal events are sent only to tasks started with
    ``webhook_events: "all"``, unless ``force`` (a redelivery). A task's end is recorded by the write that ends it
    (``TaskStore.finish``), not here. Never raises (logged): a webhook must not fail the task it reports on.
    """
    if not task.webhook_url:
        return None
    event = event or f"task.{task.status}"
    terminal = event in {f"task.{s}" for s in TERMINAL}
    if not (terminal or force or task.webhook_events == "all"):
        return None
    try:
        delivery_id = dispatcher.store.deliveries.add(task.task_id, task.tenant, event, now_ms())
    except Exception as exc:
        log.error("could not record webhook %s for %s: %s", event, task.task_id, exc)
        return None
    send_delivery(dispatcher.app, delivery_id)
    return delivery_id


def deliver(store: TaskStore, secret: str, delivery: Delivery) -> Attempt:
    """POST the task's JSON to its webhook URL once (attempt number ``delivery.attempt``) and record the attempt on
    the task. A 2xx answer is success.

    Refuses (without sending) URLs on private addresses unless ``webhook_allowed_hosts`` lists them.
    """
    task_id, delivery_id, event, attempt = delivery.task_id, delivery.delivery_id, delivery.event, delivery.attempt
    task = store.get(task_id)
    if task is None or not task.webhook_url:
        return Attempt(delivery_id, event, "", attempt, now(), False, error="the task no longer exists")
    url = task.webhook_url
    settings = store.settings
    task_json = task.to_json(UrlSigner.from_settings(settings, store).screenshot_urls(settings.public_base_url))
    payload = {"event": event, "delivery_id": delivery_id, "task": task_json}
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    started = time.perf_counter()
    reason, address = NetworkGuard(False, settings.webhook_allowed_hosts, "LODESTAR_WEBHOOK_ALLOWED_HOSTS").pin(url)
    if reason or address is None:
        result = Attempt(delivery_id, event, url, attempt, now(), False, error=f"refused: {reason}")
    else:
        headers = {"Content-Type": "application/json", "User-Agent": "Lodestar-Webhooks/1",
                   "Lodestar-Event": event, "Lodestar-Delivery": delivery_id,
                   "Lodestar-Timestamp": str(timestamp), "Lodestar-Signature": sign(secret, timestamp, body)}
        try:
            with pinned_session(str(address)) as session:
                resp = session.post(url, data=body, headers=headers, timeout=settings.webhook_timeout,
                                    allow_redirects=False)
            ok = 200 <= resp.status_code < 300
            result = Attempt(delivery_id, event, url, attempt, now(), ok, resp.status_code,
                             None if ok else f"HTTP {resp.status_code}",
                             round((time.perf_counter() - started) * 1000, 1))
        except requests.RequestException as exc:
            result = Attempt(delivery_id, event, url, attempt, now(), False, error=type(exc).__name__ + ": " +
                             str(exc)[:300], duration_ms=round((time.perf_counter() - started) * 1000, 1))
    store.record_webhook_attempt(task_id, asdict(result))
    return result


def _pinned_conn(conn: HTTPConnection, address: str) -> socket.socket:
    """urllib3's ``HTTPConnection._new_conn`` with ``address`` in place of the host name's lookup."""
    try:
        return create_connection((address, conn.port), conn.timeout, source_address=conn.source_address,
                                 socket_options=conn.socket_options)
    except TimeoutError as exc:
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} ({address}) timed out") from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection to {address}: {exc}") from exc


class _PinnedAdapter(HTTPAdapter):
    """A requests transport that connects to one IP address whatever the URL's host name says, keeping the name
    for the Host header, TLS SNI and certificate checks (only the socket's connect changes)."""

    def __init__(self, address: str):
        self._address = address
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **kwargs)
        address = self._address

        class Http(HTTPConnection):
            def _new_conn(self) -> socket.socket:
                return _pinned_conn(self, address)

        class Https(HTTPSConnection):
            def _new_conn(self) -> socket.socket:
                return _pinned_conn(self, address)

        class HttpPool(HTTPConnectionPool):
            ConnectionCls = Http

        class HttpsPool(HTTPSConnectionPool):
            ConnectionCls = Https

        self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}


def pinned_session(address: str) -> requests.Session:
    """A requests session whose connections all go to ``address`` (the one the network guard checked), so the
    host name cannot resolve to another address between the check and the connection (DNS rebinding)."""
    session = requests.Session()
    adapter = _PinnedAdapter(address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def attempts(store: TaskStore, task_id: str) -> list[dict[str, Any]]:
    """Every recorded delivery attempt of a task, oldest first."""
    return store.webhook_attempts(task_id)


def backoff(attempt: int) -> int:
    """Seconds before retry number ``attempt`` + 1: 2, 4, 8 ... capped at 600."""
    return int(min(2 ** attempt, 600))
