"""Structured output: a task's ``output_schema`` (JSON Schema, draft 2020-12) and the final answers checked against it.

The API checks the schema itself at submit (:func:`check_schema`: a bad schema is a 422 on ``output_schema``); the
worker reads the agent's final answer (:func:`parse_answer`) and validates it (:func:`answer_errors`), both with the
``jsonschema`` library. Model adapters whose provider wants an object at the root of a schema (OpenAI's
``text.format``, Anthropic's tool ``input_schema``) send :func:`object_schema` and read answers back through
:func:`unwrap`. :func:`answer_prompt` is the request for an answer in the prompt, for providers with no native way.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

WRAPPER_KEY = "answer"
"""The property a schema whose root is not an object is wrapped in (:func:`object_schema`)."""
MAX_ERRORS = 5
"""Validation errors quoted in a task's ``error`` and in what the model is told."""

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def check_schema(schema: Any) -> None:
    """Raise ValueError (the reason, naming the part of the schema at fault) unless ``schema`` is a JSON Schema of
    draft 2020-12 (an object or a boolean)."""
    if not isinstance(schema, dict | bool):
        raise ValueError("must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"not a valid JSON Schema (draft 2020-12){f' at {where}' if where else ''}: "
                         f"{exc.message}") from None


def answer_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """The ways ``value`` fails ``schema``, each as "<JSON path>: <reason>" (at most :data:`MAX_ERRORS`, the first
    ones by position); empty when it matches. A ``$ref`` that cannot be resolved is reported as an error."""
    validator = Draft202012Validator(schema)
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    except Unresolvable as exc:
        return [f"$: output_schema has a $ref that cannot be resolved ({exc})"]
    return [f"{e.json_path}: {e.message}" for e in errors[:MAX_ERRORS]]


def parse_answer(text: str | None) -> Any:
    """The JSON value of a model's final answer text: the whole text, a fenced ```json block, or the first object
    or array in it.

    Raises:
        ValueError: no JSON value could be read (the message quotes the start of the text).
    """
    if text is None or not text.strip():
        raise ValueError("the final answer is empty, not JSON")
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    candidates = [fenced.group(1)] if fenced else [stripped]
    starts = [i for i in (stripped.find("{"), stripped.find("[")) if i >= 0]
    if starts:
        candidates.append(stripped[min(starts):])
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            value, end = decoder.raw_decode(candidate)
        except ValueError:
            continue
        if candidate is not candidates[0] or not candidate[end:].strip():
            return value
    raise ValueError(f"the final answer is not JSON: {stripped[:120]!r}")


def object_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(schema, False)`` when its root is an object schema, else ``({"type": "object", "properties": {"answer":
    schema}, "required": ["answer"]}, True)``: what providers that take only object schemas are sent."""
    if schema.get("type") == "object":
        return schema, False
    return {"type": "object", "properties": {WRAPPER_KEY: schema}, "required": [WRAPPER_KEY],
            "additionalProperties": False}, True


def unwrap(value: Any, wrapped: bool) -> Any:
    """The answer inside a value of :func:`object_schema`'s wrapper (the value as is when not ``wrapped``, or when
    it is not the wrapper's shape: validation then says what is wrong)."""
    if wrapped and isinstance(value, dict) and set(value) == {WRAPPER_KEY}:
        return value[WRAPPER_KEY]
    return value


def answer_prompt(schema: dict[str, Any]) -> str:
    """The request for a structured final answer, for prompts: the schema as compact JSON."""
    return ("When the task is done, give your final answer as JSON only (no other text) that matches this JSON "
            f"Schema: {json.dumps(schema, separators=(',', ':'))}")
