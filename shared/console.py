"""The console's request and response schemas (marshmallow, also the OpenAPI document's): one human action for a
paused task (POST /agent/tasks/{id}/actions, the ``Action`` schema's JSON form as ``worker.computer.Action`` reads it)
and a share link (POST /agent/tasks/{id}/share). Kept apart from ``shared/schemas.py`` only for its size."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from shared.schemas import HTTP_URL_PATTERN, Pattern, StrictBool, StrictFloat, StrictInt, _Answer
from shared.settings import Settings

HUMAN_ACTIONS = ("click", "double_click", "triple_click", "right_click", "move", "scroll", "type", "key", "drag",
                 "wait", "navigate", "select")
"""What a user may do in a paused task's environment: the agent's allowlist (``worker.computer.ACTIONS``) without
``done`` and ``fail`` (a user does not end the agent's task by acting; cancel does)."""
POINTED = ("click", "double_click", "triple_click", "right_click", "move")
"""Actions that need a point: ``x`` and ``y``, or a ``target``."""
MAX_COORDINATE = 10_000
"""Largest ``x`` / ``y`` the schema takes; the task's viewport bounds them further (checked by the route)."""


class TargetSchema(Schema):
    """An element named the way a user would name it (``worker.computer.Target``)."""

    class Meta:
        unknown = EXCLUDE

    by = fields.Str(required=True, validate=validate.OneOf(["text", "label", "role"]))
    name = fields.Str(required=True, validate=validate.Length(1, 500))
    role = fields.Str(validate=validate.Length(1, 64))
    exact = StrictBool()
    nth = StrictInt(validate=validate.Range(0, 100))


class ActionSchema(Schema):
    """One action in the ``Action`` schema's JSON form: ``{"type": "click", "x": 200, "y": 150}``,
    ``{"type": "type", "text": "hello"}``, ``{"type": "key", "keys": "Enter"}``, ``{"type": "scroll", "dy": 300}``...
    Coordinates are CSS pixels of the task's viewport. Each type's required fields are checked (422 naming one)."""

    class Meta:
        unknown = EXCLUDE

    type = fields.Str(required=True, validate=validate.OneOf(HUMAN_ACTIONS))
    x = StrictInt(validate=validate.Range(0, MAX_COORDINATE))
    y = StrictInt(validate=validate.Range(0, MAX_COORDINATE))
    x2 = StrictInt(validate=validate.Range(0, MAX_COORDINATE))
    y2 = StrictInt(validate=validate.Range(0, MAX_COORDINATE))
    dx = StrictInt(validate=validate.Range(-MAX_COORDINATE, MAX_COORDINATE))
    dy = StrictInt(validate=validate.Range(-MAX_COORDINATE, MAX_COORDINATE))
    text = fields.Str(validate=validate.Length(max=10_000))
    keys = fields.Str(validate=validate.Length(1, 100))
    url = fields.Str(validate=Pattern(HTTP_URL_PATTERN, error="Not a valid http(s) URL."))
    seconds = StrictFloat(validate=validate.Range(0, 60))
    target = fields.Nested(TargetSchema)

    @validates_schema
    def _has_what_its_type_needs(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("type")
        if kind in POINTED and "target" not in data:
            for name in ("x", "y"):
                if name not in data:
                    raise ValidationError(f"{kind} needs x and y (or a target)", field_name=name)
        needs = {"drag": ("x", "y", "x2", "y2"), "type": ("text",), "key": ("keys",), "navigate": ("url",),
                 "select": ("target", "text")}.get(str(kind), ())
        for name in needs:
            if name not in data:
                raise ValidationError(f"{kind} needs {name}", field_name=name)


def make_share_schema(settings: Settings) -> Schema:
    """The schema of POST /agent/tasks/{id}/share bodies: ``{"expires_in": seconds}`` (optional, 1 to
    ``settings.share_max_ttl``; default ``settings.share_ttl``)."""

    class ShareSchema(Schema):
        class Meta:
            unknown = EXCLUDE

        expires_in = StrictInt(validate=validate.Range(1, settings.share_max_ttl),
                               metadata={"description": f"Seconds the link works (default {settings.share_ttl})"})

    return ShareSchema()


class ActionResultSchema(_Answer):
    """POST /agent/tasks/{id}/actions: the step the action became, its result and the screenshot after it."""

    step = fields.Int(required=True)
    result = fields.Dict(required=True, metadata={"description": "{ok, error?, x?, y?, blocked?}"})
    screenshot_url = fields.Str(required=True, metadata={"description": "The screen after the action: a signed "
                                                         "URL that loads without the bearer key"})
    url = fields.Str(allow_none=True, metadata={"description": "The page's URL after the action"})
    status = fields.Str(required=True)


class ShareResponseSchema(_Answer):
    """POST /agent/tasks/{id}/share: the read-only console page of the task, signed, and when it expires."""

    url = fields.Str(required=True)
    expires_at = fields.Int(required=True, metadata={"description": "epoch seconds"})
