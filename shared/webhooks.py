"""Webhooks: signed POSTs of a task's JSON to the URL given at start (or the tenant's default) when it ends.

Each delivery is a Celery task (``lodestar.deliver_webhook`` on the ``webhooks`` queue, served by every worker)
retried with exponential backoff (2, 4, 8 ... s, at most 10 minutes apart) up to ``webhook_max_attempts``.
Every attempt is recorded on the task (GET /agent/tasks/{id}/webhooks).

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
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import requests
from celery import Celery

from shared.netguard import NetworkGuard
from shared.signing import UrlSigner
from shared.states import TERMINAL
from shared.store import TaskStore, now

log = logging.getLogger(__name__)

DELIVER_WEBHOOK = "lodestar.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"


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


def schedule(app: Celery, store: TaskStore, task_id: str, event: str | None = None,
             force: bool = False) -> str | None:
    """Queue a delivery of the task's current JSON if it has a webhook URL; returns the delivery id or None.

    ``event`` defaults to "task.<current status>". Non-terminal events are sent only to tasks started with
    ``webhook_events: "all"``, unless ``force`` (a redelivery). Never raises for a broker error (logged): a
    webhook must not fail the task it reports on.
    """
    task = store.get(task_id)
    if task is None or not task.webhook_url:
        return None
    event = event or f"task.{task.status}"
    terminal = event in {f"task.{s}" for s in TERMINAL}
    if not (terminal or force or task.webhook_events == "all"):
        return None
    delivery_id = "dlv_" + secrets.token_hex(12)
    try:
        app.send_task(DELIVER_WEBHOOK, args=[task_id, delivery_id, event, 1], queue=WEBHOOK_QUEUE)
    except Exception as exc:
        log.error("could not queue webhook %s for %s: %s", event, task_id, exc)
        return None
    return delivery_id


def deliver(store: TaskStore, secret: str, task_id: str, delivery_id: str, event: str, attempt: int) -> Attempt:
    """POST the task's JSON to its webhook URL once and record the attempt. A 2xx answer is success.

    Refuses (without sending) URLs on private addresses unless ``webhook_allowed_hosts`` lists them.
    """
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
    reason = NetworkGuard(False, settings.webhook_allowed_hosts, "LODESTAR_WEBHOOK_ALLOWED_HOSTS").check(url)
    if reason:
        result = Attempt(delivery_id, event, url, attempt, now(), False, error=f"refused: {reason}")
    else:
        headers = {"Content-Type": "application/json", "User-Agent": "Lodestar-Webhooks/1",
                   "Lodestar-Event": event, "Lodestar-Delivery": delivery_id,
                   "Lodestar-Timestamp": str(timestamp), "Lodestar-Signature": sign(secret, timestamp, body)}
        try:
            resp = requests.post(url, data=body, headers=headers, timeout=settings.webhook_timeout,
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


def attempts(store: TaskStore, task_id: str) -> list[dict[str, Any]]:
    """Every recorded delivery attempt of a task, oldest first."""
    return store.webhook_attempts(task_id)


def backoff(attempt: int) -> int:
    """Seconds before retry number ``attempt`` + 1: 2, 4, 8 ... capped at 600."""
    return int(min(2 ** attempt, 600))
