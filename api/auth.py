"""Who a request acts for: the bearer key resolved to a tenant, the tenant's rate limit, and the tenant check on
every task a request names (another tenant's task is a 404, as if it did not exist). A console share link (signed,
``shared/signing.py``) stands in for the key on the reads of one task: its record and its events."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import g, request

from api.errors import ApiError, invalid_field, not_found
from api.state import state
from shared import logs
from shared.signing import EXPIRES_PATTERN, share_resource
from shared.task import Task

SHAREABLE = frozenset({"tasks.retrieve_status", "events.task_events"})
"""Endpoints a share link opens without the key (``expires`` and ``sig`` of ``share:<task id>`` in the query)."""


def authenticate() -> None:
    """``before_request`` of every API blueprint: set ``g.principal`` and ``g.tenant`` from the bearer key.

    Raises:
        ApiError: 401 without a valid key; 429 (with ``retry-after``) past the tenant's rate limit.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing bearer API key (Authorization: Bearer <key>)")
    st = state()
    principal = st.store.tenants.resolve(key.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    g.principal = principal
    g.tenant = principal.tenant
    logs.bind(tenant=principal.tenant)
    if principal.rate_limit:
        wait = st.rate_limits.retry_after(principal.tenant, principal.rate_limit)
        if wait:
            raise ApiError(429, "too_many_requests", f"rate limit of {principal.rate_limit} exceeded",
                           headers={"retry-after": str(wait), "x-should-retry": "true"})


def authenticate_or_shared() -> None:
    """``before_request`` of the blueprints holding :data:`SHAREABLE` endpoints: a request to one of them with no
    ``Authorization`` header and a ``sig`` acts for the task's tenant when the share link is good (``g.shared``);
    every other request goes through :func:`authenticate`.

    Raises:
        ApiError: as :func:`check_share_link`; as :func:`authenticate`.
    """
    g.shared = False
    if request.endpoint in SHAREABLE:
        _check_expires()  # as the document says, whichever credential the request carries
    if request.endpoint in SHAREABLE and "Authorization" not in request.headers and request.args.get("sig"):
        g.tenant = check_share_link(str((request.view_args or {}).get("task_id", "")))
        g.principal = None
        g.shared = True
        logs.bind(tenant=g.tenant)
        return
    authenticate()


def check_share_link(task_id: str) -> str:
    """The tenant of task ``task_id`` when the request's ``expires`` and ``sig`` are a good share link of it.

    Raises:
        ApiError: 422 when ``expires`` is not epoch seconds; 403 when the link is malformed, tampered with, for
            another task, of a task that does not exist, or expired.
    """
    _check_expires()
    expires, sig = request.args.get("expires"), request.args.get("sig")
    task = state().store.get(task_id)
    reason = state().signer.refusal(task.tenant if task else None, share_resource(task_id), expires, sig)
    if reason or task is None:
        raise ApiError(403, "forbidden", reason or "invalid link signature")
    return task.tenant


def _check_expires() -> None:
    """Raises ApiError 422 naming ``expires`` when the query has one that is not epoch seconds."""
    expires = request.args.get("expires")
    if expires is not None and not re.fullmatch(EXPIRES_PATTERN, expires):
        raise invalid_field("expires", "expires must be the epoch seconds of a signed URL", "Not a valid expiry.")


def load_task(task_id: str) -> Task:
    """The caller's task ``task_id``. Raises ApiError 404 when it does not exist or belongs to another tenant."""
    task = state().store.get(task_id)
    if task is None or task.tenant != g.tenant:
        raise not_found(f"task {task_id}")
    return task


def base_url() -> str:
    """The URL clients reach this API at: ``LODESTAR_PUBLIC_BASE_URL``, else the request's own host URL."""
    return state().settings.public_base_url.rstrip("/") or request.host_url.rstrip("/")


def share_expiry() -> int | None:
    """When this request came through a share link (:func:`authenticate_or_shared`), the link's ``expires``
    (epoch seconds, checked already), else None."""
    return int(request.args["expires"]) if g.get("shared") else None


def urls() -> Callable[[Task, int], str]:
    """The screenshot URL maker for ``Task.to_json`` in this request: signed, expiring URLs under
    :func:`base_url` that load without the bearer key (``shared/signing.py``); through a share link they expire
    with it."""
    return state().signer.screenshot_urls(base_url(), share_expiry())


def task_bodies(tasks: list[Task]) -> list[dict[str, Any]]:
    """The public JSON of ``tasks`` (``Task.to_json``), queued ones with their ``queue_position`` and
    ``wait_reason`` from the store (one round trip for all of them, none when none is queued)."""
    make_url = urls()
    bodies = [task.to_json(make_url) for task in tasks]
    for body, where in zip(bodies, state().store.queue.describe(tasks), strict=True):
        body.update(where)
    return bodies
