"""Error answers and request-body parsing shared by every route.

Every error body is ``{"error": {"type", "message", "fields"?}}`` (``shared.schemas.ErrorSchema``): 400 (not JSON),
401, 404, 409 (``x-should-retry`` says whether waiting can help), 413, 422 (``fields`` names each bad field), 429
(``retry-after``) or 503 (Redis, the broker or the S3 artifact store is down; ``retry-after``).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Flask, Response, jsonify, request
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


def json_body() -> Any:
    """The request body parsed as JSON whatever its content type. Raises ApiError 400 when it is not JSON."""
    data = request.get_json(silent=True, force=True)
    if data is None:
        raise ApiError(400, "invalid_json", "the request body must be JSON")
    return data


def json_object() -> dict[str, Any]:
    """The request body as a JSON object. Raises ApiError 400 when it is not one."""
    data = json_body()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def register(app: Flask) -> None:
    """Install the error handlers: ApiError as is, werkzeug's HTTP errors and Redis failures in the same shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        kind = (exc.name or "error").lower().replace(" ", "_")
        headers = {"x-should-retry": "true"} if exc.code == 429 else {}
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
