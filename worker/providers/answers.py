"""Reading a model's answer: :class:`AnswerError` for an answer (or one of its actions) that cannot be used, and
the readers of the values in it (:func:`parse_json_body`, :func:`point_of`, :func:`int_of`, :func:`number_of`,
:func:`text_of`) that every adapter shares.
"""

from __future__ import annotations

import json
import math
from typing import Any


class AnswerError(Exception):
    """The model's answer (or one of its actions) cannot be turned into actions: malformed JSON or text, a missing
    field, or an action with no equivalent here. Becomes a failed step (``Decision.error``), never a task failure."""


def parse_json_body(text: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer. Raises AnswerError when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        raise AnswerError(f"the answer is not JSON: {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise AnswerError("the answer is not a JSON object")
    return data


def point_of(values: Any) -> tuple[float, float]:
    """A model point ``[x, y]`` as two finite floats. Raises AnswerError otherwise."""
    try:
        x, y = values
    except (TypeError, ValueError):
        raise AnswerError(f"expected a point [x, y], got {values!r}") from None
    for v in (x, y):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise AnswerError(f"expected numeric coordinates, got {values!r}")
    return float(x), float(y)


def int_of(value: Any, default: int = 0) -> int:
    """An int from a JSON number or numeric string; ``default`` for anything else."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def number_of(value: Any, name: str) -> float:
    """A finite number from a JSON number or numeric string (None: 0). Raises AnswerError naming ``name``."""
    if value is None:
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnswerError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise AnswerError(f"{name} must be a finite number, got {value!r}")
    return number


def text_of(value: Any) -> str:
    """``value`` when it is a string, else ""."""
    return value if isinstance(value, str) else ""
