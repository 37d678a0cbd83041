"""Ids and clocks of the store: task and batch ids, and the two time units it stores (epoch seconds for records and
events, epoch milliseconds for the scores of the leases, dispatch and deliveries sets)."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """A fresh id: ``prefix`` + "_" + 22 URL-safe characters (128 random bits, ``secrets.token_urlsafe``).

    Shorter than a hex UUID on purpose: an id is stored about ten times per queued task (record key, list
    indexes, the Celery message), and at 27 characters each copy fits a smaller allocation (docs/performance.md).
    """
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def new_task_id() -> str:
    """A fresh task id: "task_" + 22 URL-safe characters (:func:`new_id`)."""
    return new_id("task")


def now() -> float:
    """Wall-clock time in epoch seconds (the unit of every stored timestamp)."""
    return time.time()


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch (the scores of the leases, dispatch and deliveries sets)."""
    return int(time.time() * 1000)
