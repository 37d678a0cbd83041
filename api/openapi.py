"""The OpenAPI 3 document of the whole API, generated with apispec from the marshmallow schemas in ``shared/schemas.py``.

Served at GET /openapi.json. :data:`OPERATIONS` is the one table of paths; a test checks it matches the app's routes.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from shared.schemas import (
    IGNORED_PARAMS,
    OFFLINE_AGENTS,
    ErrorSchema,
    EventSchema,
    MessageSchema,
    StatusResponseSchema,
    TaskSchema,
    TaskStartResponseSchema,
    make_start_schema,
)
from shared.settings import Settings

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_JSON_ERR = {"content": {"application/json": {"schema": "Error"}}}
_SSE = {"description": "text/event-stream: `id: <seq>` and `data: <Event JSON>` per event; closes after the end event",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Body is not JSON", 401: "Missing or invalid API key", 404: "No such task (or another tenant's)",
            409: "The task's status does not allow this (x-should-retry tells whether waiting helps)",
            422: "A field is invalid; `error.fields` names it", 503: "Redis or the queue is unavailable"}
    return {str(c): {"description": text[c], **_JSON_ERR} for c in codes}


OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/agent/tasks": {"post": {
        "operationId": "start", "summary": "Start a task (Lightcone: agent.tasks.start)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": "TaskStart"}}},
        "responses": {**_ok("TaskStartResponse"), **_errors(400, 401, 422, 503)}}},
    "/agent/tasks/stream": {"post": {
        "operationId": "start_stream", "summary": "Start a task and stream its events (Lightcone: start_stream)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": "TaskStart"}}},
        "responses": {"200": _SSE, **_errors(400, 401, 422, 503)}}},
    "/agent/tasks/{id}": {"get": {
        "operationId": "retrieve_status", "summary": "A task's status and details", "parameters": [_ID],
        "responses": {**_ok("Task"), **_errors(401, 404)}}},
    "/agent/tasks/{id}/messages": {"post": {
        "operationId": "inject_message", "summary": "Send the agent a message (kept until its next step)",
        "parameters": [_ID], "requestBody": {"required": True, "content": {"application/json": {"schema": "Message"}}},
        "responses": {**_ok("StatusResponse"), **_errors(400, 401, 404, 409, 422)}}},
    "/agent/tasks/{id}/pause": {"post": {
        "operationId": "pause", "summary": "Pause a running task before its next action", "parameters": [_ID],
        "responses": {**_ok("StatusResponse"), **_errors(401, 404, 409)}}},
    "/agent/tasks/{id}/resume": {"post": {
        "operationId": "resume", "summary": "Resume a paused task where it stopped", "parameters": [_ID],
        "responses": {**_ok("StatusResponse"), **_errors(401, 404, 409)}}},
    "/agent/tasks/{id}/cancel": {"post": {
        "operationId": "cancel", "summary": "Cancel a queued, running or paused task (Lodestar)", "parameters": [_ID],
        "responses": {**_ok("StatusResponse"), **_errors(401, 404, 409)}}},
    "/agent/tasks/{id}/events": {"get": {
        "operationId": "events", "summary": "(Re)attach to a task's event stream, replaying after Last-Event-ID",
        "parameters": [_ID, {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}},
                       {"name": "after", "in": "query", "schema": {"type": "integer"}}],
        "responses": {"200": _SSE, **_errors(401, 404, 422)}}},
    "/agent/tasks/{id}/ws": {"get": {
        "operationId": "events_ws", "summary": "The same events over a WebSocket, one JSON text message each",
        "parameters": [_ID], "responses": {"101": {"description": "Switching protocols"}, **_errors(401, 404)}}},
    "/agent/tasks/{id}/screenshots/{step}": {"get": {
        "operationId": "screenshot", "summary": "The JPEG the agent saw at a step",
        "parameters": [_ID, {"name": "step", "in": "path", "required": True, "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {"schema": {"type": "string",
                                                                                         "format": "binary"}}}},
                      **_errors(401, 404)}}},
    "/healthz": {"get": {"operationId": "healthz", "summary": "Redis reachable?", "security": [],
                         "responses": {"200": {"description": "healthy"}, "503": {"description": "Redis down"}}}},
    "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
                              "responses": {"200": {"description": "OpenAPI 3 JSON"}}}},
}


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document as a dict."""
    spec = APISpec(
        title="Lodestar Agent Tasks API", version="0.1.0", openapi_version="3.0.3", plugins=[MarshmallowPlugin()],
        info={"description": (
            "Wire-compatible with Lightcone's Agent Tasks API (point the tzafon SDK's base_url here), plus task "
            f"management. Offline agents (agent_type): {', '.join(OFFLINE_AGENTS)}. Accepted but without effect "
            f"in this release: {', '.join(IGNORED_PARAMS)}. Unknown fields are ignored.")},
        security=[{"bearer": []}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("TaskStart", schema=make_start_schema(settings))
    for name, schema in (("TaskStartResponse", TaskStartResponseSchema), ("Task", TaskSchema),
                         ("StatusResponse", StatusResponseSchema), ("Message", MessageSchema),
                         ("Error", ErrorSchema), ("Event", EventSchema)):
        spec.components.schema(name, schema=schema)
    for path, operations in OPERATIONS.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
