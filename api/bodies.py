"""Reading request bodies safely: a size limit enforced before the body is read, JSON parsed with a depth limit
checked before parsing, strict UTF-8, and no NaN, Infinity or unpaired surrogates.

- size: ``LODESTAR_MAX_BODY_BYTES``. A ``Content-Length`` over it is answered 413 before anything else (before
  authentication, before a byte of the body is read); a chunked body is cut off with 413 when it passes it
  (werkzeug's ``MAX_CONTENT_LENGTH``, a limited stream).
- depth: ``LODESTAR_MAX_JSON_DEPTH``. Strings are blanked and the brackets counted level by level in C-speed
  byte operations, so a 50 000-deep body costs a few passes, never a ``RecursionError``.
- numbers: ``NaN``, ``Infinity``, ``-Infinity`` and literals too large for a float (``1e999``) are refused with 422
  naming the field, as is a string holding an unpaired UTF-16 surrogate (``"\\ud800"``), which is not text.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from api.errors import ApiError, too_large
from api.state import state
from shared.settings import Settings

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_CURLY_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotFinite(float):
    """What the parser makes of NaN, Infinity and 1e999: found afterwards to name the field."""


def install(app: Flask, settings: Settings) -> None:
    """Limit request bodies to ``settings.max_body_bytes``: a larger ``Content-Length`` is a 413 before the request
    is authenticated or its body read; a chunked body is read to one byte past the limit at most, then 413
    (:func:`json_body`, :func:`raw_body`)."""
    limit = settings.max_body_bytes
    # one byte more than allowed: werkzeug stops a chunked body there without an error, and json_body() then
    # sees that it is too long (a body of exactly the limit is allowed either way)
    app.config["MAX_CONTENT_LENGTH"] = limit + 1

    @app.before_request
    def _check_length() -> None:
        if request.content_length is not None and request.content_length > limit:
            raise too_large(limit)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return too_large(limit).response()


def nesting_too_deep(raw: bytes, limit: int) -> bool | None:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit`` levels: True (too deep), False
    (within it), None (its brackets do not balance, so it is not JSON). Costs at most ``limit`` passes of
    ``bytes.replace`` over its brackets (strings blanked first), whatever the depth: ~0.1 s for a 12 MB batch of
    10 000 tasks, ~1 s for the worst 16 MB body (every bracket nested ``limit`` - 1 deep), on one core."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    skeleton = _STRING.sub(b"", raw).translate(_CURLY_AS_SQUARE, _NOT_BRACKETS)
    if b"[" * (limit + 1) in skeleton:  # the usual deep body: a run of openings (one substring search)
        return True if skeleton.count(b"[") == skeleton.count(b"]") else None
    for _ in range(limit):  # each pass removes the innermost level everywhere
        if not skeleton:
            return False
        shorter = skeleton.replace(b"[]", b"")
        if shorter == skeleton:
            return None
        skeleton = shorter
    if not skeleton:
        return False
    return True if b"[]" in skeleton else None


def parse_json(raw: bytes, max_depth: int) -> Any:
    """``raw`` (UTF-8, an optional BOM) parsed as JSON.

    Raises:
        ApiError: 400 ``invalid_json`` when it is not UTF-8 or not JSON; 422 ``invalid_request`` when it nests
            deeper than ``max_depth``, holds a number that is not finite (NaN, Infinity, 1e999) or an integer
            of more than 4300 digits, or a string with an unpaired surrogate (``fields`` names the first one,
            as a dotted path such as ``tasks.3.temperature``).
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json",
                       f"the request body must be JSON in UTF-8 (invalid byte at {exc.start})") from None
    deep = nesting_too_deep(raw, max_depth)
    if deep is None:
        raise ApiError(400, "invalid_json", "the request body must be JSON (its brackets do not balance)")
    if deep:
        raise ApiError(422, "invalid_request", f"the request body nests arrays and objects deeper than {max_depth} "
                       "levels (LODESTAR_MAX_JSON_DEPTH)", fields={"body": [f"Nested deeper than {max_depth}."]})
    not_finite: list[float] = []

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            value = _NotFinite(value)
            not_finite.append(value)
        return value

    try:
        data = json.loads(text, parse_constant=finite, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body must be JSON ({exc.msg} at line {exc.lineno} "
                       f"column {exc.colno})") from None
    except ValueError:  # an integer literal past Python's 4300-digit limit
        raise ApiError(422, "invalid_request", "the request body holds a number with more than 4300 digits",
                       fields={"body": ["Number too large."]}) from None
    if not_finite:
        where = _find(data, lambda v: isinstance(v, _NotFinite))
        if where is not None:
            raise ApiError(422, "invalid_request", f"{where}: numbers must be finite (JSON has no NaN or Infinity)",
                           fields={where: ["Not a finite number."]})
    if _SURROGATE_ESCAPE.search(text):
        where = _find(data, _unpaired_surrogate)
        if where is not None:
            raise ApiError(422, "invalid_request", f"{where}: not valid Unicode (an unpaired UTF-16 surrogate)",
                           fields={where: ["Not valid Unicode."]})
    return data


def _unpaired_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def _find(data: Any, bad: Any, path: str = "") -> str | None:
    """The dotted path (keys and indexes) of the first value, or object key, in ``data`` for which ``bad`` holds;
    "body" for the body itself. Depth is already bounded by the caller."""
    if bad(data):
        return path or "body"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        name = str(key).encode("utf-8", "backslashreplace").decode()  # printable even when the key is the culprit
        here = f"{path}.{name}" if path else name
        if bad(key):
            return here
        found = _find(value, bad, here)
        if found is not None:
            return found
    return None


def json_body() -> Any:
    """The request body parsed as JSON whatever its content type (``curl -d`` sends form-encoded), with the limits
    of :func:`parse_json` from the app's settings.

    Raises:
        ApiError: 400 when it is not JSON (or not UTF-8); 413 when it is larger than ``max_body_bytes``; 422 as
            :func:`parse_json`.
    """
    return parse_json(raw_body(), state().settings.max_json_depth)


def raw_body() -> bytes:
    """The request body's bytes (read once, cached). Raises ApiError 413 when it is larger than ``max_body_bytes``
    (a chunked body, cut off by :func:`install`'s limit; a ``Content-Length`` was refused before)."""
    limit = state().settings.max_body_bytes
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise too_large(limit)
    return raw


def json_object() -> dict[str, Any]:
    """The request body as a JSON object. Raises ApiError 400 when it is not one (and as :func:`json_body`)."""
    data = json_body()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", f"the request body must be a JSON object, not {type(data).__name__}")
    return data
