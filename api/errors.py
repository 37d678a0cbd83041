"""Error answers and request-body parsing shared by every route.

Every error body is ``{"error": {"type", "message", "fields"?}}`` (``shared.schemas.ErrorSchema``): 400 (not JSON),
401, 403 (a bad or expired signed URL), 404, 405 (with ``Allow``), 409 (``x-should-retry`` says whether waiting
can help), 413 (body too large), 422 (``fields`` names each bad field), 426 (a WebSocket route asked without an
Upgrade), 429 (``retry-after``) or 503 (Redis, the broker or the S3 artifact store is down; ``retry-after``).
Request bodies are read by ``api/bodies.py``.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException

from shared.artifacts import ArtifactError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP ``status``, a machine ``kind``, a message, optional per-field reasons and headers."""

    def __init__(self, status: int, kind: str, message: str, fields: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.fields, self.headers = status, kind, message, fields, headers or {}

    def response(self) -> Response:
        body: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        resp = jsonify({"error": body})
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what}")


def unavailable() -> ApiError:
    """503 for a submit that could not store its tasks."""
    return ApiError(503, "queue_unavailable", "the task store and queue (Redis) is unavailable; retry later",
                    headers={"retry-after": "1"})


def too_large(limit: int) -> ApiError:
    """413 for a request body over ``limit`` bytes."""
    return ApiError(413, "request_too_large", f"the request body is larger than {limit} bytes "
                    "(LODESTAR_MAX_BODY_BYTES); split a batch into smaller ones")


def invalid(exc: ValidationError) -> ApiError:
    """422 from a marshmallow error: ``fields`` maps each bad field to its reasons, the message summarises them."""
    messages = cast(dict[str, Any], exc.messages)
    return ApiError(422, "invalid_request", summarise(messages), fields=messages)


def invalid_field(name: str, message: str, reason: str) -> ApiError:
    """422 naming one field (a query parameter, a header)."""
    return ApiError(422, "invalid_request", message, fields={name: [reason]})


def summarise(messages: dict[str, Any]) -> str:
    """"invalid request: field: first reason; ..." from marshmallow's per-field messages."""
    parts = []
    for name, reasons in messages.items():
        text = reasons[0] if isinstance(reasons, list) and reasons and isinstance(reasons[0], str) else reasons
        parts.append(f"{name}: {text}")
    return "invalid request: " + "; ".join(parts)


def register(app: Flask) -> None:
    """Install the error handlers: ApiError as is, werkzeug's HTTP errors and Redis failures in the same shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        kind = (exc.name or "error").lower().replace(" ", "_")
        # werkzeug's own headers (Allow on a 405, as RFC 9110 requires), but the body is ours: JSON
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        if exc.code == 429:
            headers["x-should-retry"] = "true"
        return ApiError(exc.code or 500, kind, exc.description or kind, headers=headers).response()

    @app.errorhandler(RedisError)
    def _redis_error(exc: RedisError) -> Response:
        log.error("redis error: %s", exc)
        return ApiError(503, "store_unavailable", "the task store (Redis) is unavailable; retry later",
                        headers={"retry-after": "1"}).response()

    @app.errorhandler(ArtifactError)
    def _artifact_error(exc: ArtifactError) -> Response:
        log.error("artifact store error: %s", exc)
        return ApiError(503, "artifacts_unavailable", "the artifact store (S3) is unavailable; retry later",
                        headers={"retry-after": "1"}).response()
