"""What an API process holds for the life of the app: one typed object, reached from any request with
:func:`state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import current_app
from marshmallow import Schema

from api.fanout import EndWatcher, EventHub
from shared.queue import Dispatcher
from shared.settings import Settings
from shared.signing import UrlSigner
from shared.store import TaskStore
from shared.tenants import RateLimiter

EXTENSION = "lodestar"
"""The key of :class:`AppState` in ``app.extensions``."""


@dataclass(frozen=True)
class AppState:
    """The app's long-lived parts.

    settings: the configuration. store: the task store (Redis). dispatcher: sends run messages and webhook
    deliveries on the Celery broker (``dispatcher.app`` is the Celery app). start_schema / message_schema /
    cancel_schema: the request schemas (limits from settings). waits: the long-poll watcher. events: the
    SSE/WebSocket fan-out. rate_limits: per-tenant request limits. signer: signs and checks screenshot URLs
    (``shared/signing.py``).
    """

    settings: Settings
    store: TaskStore
    dispatcher: Dispatcher
    start_schema: Schema
    message_schema: Schema
    cancel_schema: Schema
    waits: EndWatcher
    events: EventHub
    rate_limits: RateLimiter
    signer: UrlSigner


def state() -> AppState:
    """The current app's :class:`AppState` (inside a request or app context)."""
    return cast(AppState, current_app.extensions[EXTENSION])
