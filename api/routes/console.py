"""The web console: server-rendered pages with a little JavaScript (``api/templates/``, ``api/static/``), served by
the API and talking to it with the same calls as any client.

- ``/console``: sign in with an API key (kept in the browser's session storage, sent as the bearer key; nothing in
  URLs), then the tenant's tasks (filters, live counts, batch progress, a start form, bulk cancel).
- ``/console/tasks/{id}``: one task (live screenshot, step log, controls, human takeover, replay). With the
  ``expires`` and ``sig`` of a share link (``POST /agent/tasks/{id}/share``) it opens read-only, without a key.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from api.auth import check_share_link
from api.errors import ApiError

bp = Blueprint("console", __name__)

_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # a share link's signature must not leak to the pages its screenshots link
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src * data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'",
}


def _page(template: str, status: int = 200, **context: object) -> Response:
    return Response(render_template(template, **context), status=status, mimetype="text/html", headers=_HEADERS)


@bp.get("/console")
def tasks_page() -> Response:
    """The tasks page (a sign-in form until the browser holds a key)."""
    return _page("console_tasks.html")


@bp.get("/console/tasks/<task_id>")
def task_page(task_id: str) -> Response:
    """One task's page. With a share link's ``expires`` and ``sig``: read-only, checked here (403 page when the
    link is bad or expired, 422 when ``expires`` is malformed); without: the page asks for the key."""
    shared = "sig" in request.args or "expires" in request.args
    if shared:
        try:
            check_share_link(task_id)
        except ApiError as exc:
            return _page("console_error.html", exc.status, message=exc.message)
    share_query = f"expires={request.args.get('expires', '')}&sig={request.args.get('sig', '')}" if shared else ""
    return _page("console_task.html", task_id=task_id, shared=shared, share_query=share_query)
