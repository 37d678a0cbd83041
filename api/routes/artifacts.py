"""What a task produced, fetched by URL: the step screenshots. A request carries the bearer key, or the signature
of a URL the API handed out (``last_screenshot_url``, a step event's ``screenshot_url``; ``shared/signing.py``),
so an ``<img src>`` loads it with no key."""

from __future__ import annotations

import re
from typing import cast

from flask import Blueprint, Response, redirect, request

from api.auth import authenticate, load_task
from api.errors import ApiError, invalid_field, not_found
from api.state import state
from shared.artifacts import screenshot_name
from shared.signing import EXPIRES_PATTERN, screenshot_resource

bp = Blueprint("artifacts", __name__)


def _allow(task_id: str, resource: str) -> None:
    """Let the request through for ``resource`` of task ``task_id``: by its bearer key when it has an
    ``Authorization`` header (or no ``sig``), else by its signed URL (``sig`` is a credential, like the key: any
    value is checked, none refused for its shape).

    Raises:
        ApiError: 422 when ``expires`` is there but not epoch seconds; 401 (no or a bad key, and no signature);
            404 (keyed: not the caller's task); 403 when the signature is malformed, has no expiry, does not match
            (tampered, another resource or tenant, or no such task) or has expired.
    """
    expires, sig = request.args.get("expires"), request.args.get("sig")
    if expires is not None and not re.fullmatch(EXPIRES_PATTERN, expires):
        raise invalid_field("expires", "expires must be the epoch seconds of a signed URL", "Not a valid expiry.")
    if "Authorization" in request.headers or not sig:  # the key wins over a (stale) signature
        authenticate()
        load_task(task_id)
        return
    task = state().store.get(task_id)
    reason = state().signer.refusal(task.tenant if task else None, resource, expires, sig)
    if reason:
        raise ApiError(403, "forbidden", reason)


@bp.get("/agent/tasks/<task_id>/screenshots/<int:step>")
def task_screenshot(task_id: str, step: int) -> Response:
    """The JPEG the agent saw at ``step``, with the bearer key or a signed URL."""
    _allow(task_id, screenshot_resource(task_id, step))
    st = state()
    artifacts, name = st.store.artifacts, screenshot_name(step)
    if st.settings.artifacts_redirect:  # S3 reachable by clients: let them fetch the object themselves
        url = artifacts.url(task_id, name, st.settings.artifacts_redirect_ttl)
        if url:
            return cast(Response, redirect(url, 302))
    artifact = artifacts.get(task_id, name)  # from whichever store holds the task's artifacts (Redis or S3)
    if artifact is None:
        raise not_found(f"screenshot for step {step} of task {task_id} (or it expired)")
    return Response(artifact.data, mimetype=artifact.content_type,
                    headers={"Cache-Control": "private, max-age=86400, immutable"})
