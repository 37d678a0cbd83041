"""The action builder that turns model-space values into viewport ``Action``s, and the pieces of the action
tables every provider adapter shares.

Action tables: each adapter maps its provider's action names through a dict ``name -> ActionMap`` (a function of
the builder and the provider's action record), looked up with :func:`table_entry`, so a name missing from the
table is a failed step naming it. The factories below (:func:`click_at`, :func:`move_to`, :func:`drag_between`,
:func:`wait_seconds`, :func:`refuse`, :func:`no_action`) build the entries that only differ in where a point or a
value is read; provider-specific cases (scroll amounts, key chords, terminal actions) are functions in the
adapter's module. :data:`COORDINATE_ACTIONS` is the part of Anthropic's computer tool that Qwen-VL's
``computer_use`` function repeats name for name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias, TypeVar

from worker.computer import Action
from worker.providers.answers import AnswerError, point_of
from worker.providers.screen import Frame, Screen

SCROLL_NOTCH_PX = 100
"""Pixels per wheel notch, for providers that scroll in notches (Anthropic ``scroll_amount``, small Qwen values)."""
MAX_SCROLL_PX = 2000
"""Largest scroll of one action, in pixels (larger model values are clamped)."""


class ActionBuilder:
    """Builds viewport ``Action``s from model-space values, remembering the pointer across steps.

    ``cursor`` is where the pointer was last sent (viewport pixels); ``pressed_at`` is where a model pressed the
    button down (``mouse_down``): the matching ``mouse_up`` becomes one ``drag`` from there, since the computer
    has no separate button-down state. Every method raises :class:`AnswerError` for values it cannot use.
    """

    def __init__(self, screen: Screen, kind: str = "browser"):
        self.screen = screen
        self.kind = kind
        self.frame: Frame | None = None
        self.cursor: tuple[int, int] | None = None
        self.pressed_at: tuple[int, int] | None = None

    def point(self, x: Any, y: Any = None) -> tuple[int, int]:
        """Model ``(x, y)`` (or one ``[x, y]`` sequence as ``x``) -> viewport pixels."""
        if self.frame is None:
            raise AssertionError("ActionBuilder.point before a frame was set")
        fx, fy = point_of(x if y is None else (x, y))
        return self.screen.to_viewport(self.frame, fx, fy)

    def _at(self, x: Any, y: Any = None) -> tuple[int, int]:
        if x is None:
            if self.cursor is None:
                raise AnswerError("no coordinate given and the pointer has not been placed yet")
            return self.cursor
        self.cursor = self.point(x, y)
        return self.cursor

    def click(self, x: Any = None, y: Any = None, button: str = "left", count: int = 1) -> list[Action]:
        """A click at the point (the pointer's position when ``x`` is None). ``button`` left|right; ``count`` 1-3."""
        px, py = self._at(x, y)
        if button == "right":
            return [Action("right_click", x=px, y=py)]
        if button != "left":
            raise AnswerError(f"{button} button clicks are not supported (left and right only)")
        kind = {1: "click", 2: "double_click", 3: "triple_click"}.get(count)
        if kind is None:
            raise AnswerError(f"a click of {count} presses is not supported")
        return [Action(kind, x=px, y=py)]  # type: ignore[arg-type]

    def move(self, x: Any, y: Any = None) -> list[Action]:
        """Move the pointer to the point (``x`` may be an ``[x, y]`` sequence)."""
        px, py = self._at(x, y)
        return [Action("move", x=px, y=py)]

    def drag(self, start: Any, end: Any) -> list[Action]:
        """A press at ``start`` ([x, y], or None for the pointer's position), moved to ``end``, released."""
        x0, y0 = self._at(start)
        x1, y1 = self.point(end)
        self.cursor = (x1, y1)
        return [Action("drag", x=x0, y=y0, x2=x1, y2=y1)]

    def mouse_down(self, at: Any = None) -> list[Action]:
        """Remember the press point and move the pointer there (the press itself happens with the release)."""
        self.pressed_at = self._at(at)
        return [Action("move", x=self.pressed_at[0], y=self.pressed_at[1])]

    def mouse_up(self, at: Any = None) -> list[Action]:
        """Release: one ``drag`` from the press point to here (a plain click when the pointer did not move)."""
        if self.pressed_at is None:
            raise AnswerError("mouse_up without a mouse_down before it")
        start, self.pressed_at = self.pressed_at, None
        end = self._at(at)
        if end == start:
            return [Action("click", x=end[0], y=end[1])]
        return [Action("drag", x=start[0], y=start[1], x2=end[0], y2=end[1])]

    def scroll(self, at: Any, dx: float, dy: float) -> list[Action]:
        """Scroll by ``dx``/``dy`` pixels (positive: right/down) at ``at`` ([x, y], None: the pointer or centre)."""
        sx, sy = (int(max(-MAX_SCROLL_PX, min(MAX_SCROLL_PX, v))) for v in (dx, dy))
        if at is None and self.cursor is None:
            return [Action("scroll", dx=sx, dy=sy)]
        px, py = self._at(at)
        return [Action("scroll", x=px, y=py, dx=sx, dy=sy)]

    def type(self, text: Any) -> list[Action]:
        """Type ``text`` into the focused element (a non-empty string)."""
        if not isinstance(text, str) or text == "":
            raise AnswerError(f"type needs non-empty text, got {text!r}")
        return [Action("type", text=text)]

    def key(self, keys: Any, separator: str = "+") -> list[Action]:
        """One chord: a list of key names pressed together, or a string joined by ``separator``."""
        parts = [str(k).strip() for k in keys] if isinstance(keys, list) else str(keys or "").split(separator)
        parts = [p for p in parts if p]
        if not parts:
            raise AnswerError(f"no keys in {keys!r}")
        parts = [_KEY_ALIASES.get(p.lower(), p) for p in parts]
        if len(parts) > 1 and len(parts[-1]) == 1:
            parts[-1] = parts[-1].lower()  # Ctrl+C means the c key, not Shift+c
        return [Action("key", keys="+".join(parts))]

    def wait(self, seconds: Any) -> list[Action]:
        """Wait ``seconds`` (a number, clamped to 0-60)."""
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise AnswerError(f"wait needs a number of seconds, got {seconds!r}") from None
        return [Action("wait", seconds=max(0.0, min(value, 60.0)))]

    def navigate(self, url: Any) -> list[Action]:
        """Open ``url`` (browser tasks only; the browser's network guard still applies)."""
        if self.kind != "browser":
            raise AnswerError("navigate is only available in a browser task")
        if not isinstance(url, str) or not url:
            raise AnswerError(f"navigate needs a url, got {url!r}")
        return [Action("navigate", url=url)]


_KEY_ALIASES = {"kp_enter": "Enter", "super_l": "Meta", "super_r": "Meta", "control_l": "Control",
                "control_r": "Control", "shift_l": "Shift", "shift_r": "Shift", "alt_l": "Alt", "alt_r": "Alt",
                "prior": "PageUp", "next": "PageDown", "arrowup": "ArrowUp", "arrowdown": "ArrowDown",
                "arrowleft": "ArrowLeft", "arrowright": "ArrowRight"}
"""xdotool / OpenAI key names that ``worker.computer.normalize_key`` does not know."""


def done(text: Any = None) -> Action:
    """The terminal ``done`` action with ``text`` as the task's result (None when empty). A JSON object or array
    (a model's structured answer) is kept as the action's ``value``, its text being its JSON."""
    if isinstance(text, dict | list):
        return Action("done", text=json.dumps(text), value=text)
    return Action("done", text=None if text in (None, "") else str(text))


def answer(value: Any) -> Action:
    """The terminal ``done`` action carrying a structured answer: ``value`` is any JSON value (a provider tool's
    input, an unwrapped answer), its text the value itself when it is a string, else its JSON."""
    return Action("done", text=value if isinstance(value, str) else json.dumps(value), value=value)


def fail(text: Any = None) -> Action:
    """The terminal ``fail`` action with ``text`` as the task's error."""
    return Action("fail", text=str(text) if text else "the model gave up")


# --- action tables -----------------------------------------------------------------------------------------------
A = TypeVar("A")
ActionMap: TypeAlias = Callable[[ActionBuilder, A], list[Action]]
"""One entry of an action table: ``(builder, the provider's action record) -> Actions`` (model-space values in,
viewport ``Action``s out). The record is the action's JSON object (Responses API, Anthropic, Qwen) or a parsed
call (UI-TARS). Raises :class:`AnswerError` for values it cannot use."""
Read: TypeAlias = Callable[[A], Any]
"""Where an entry reads a value (a point, a duration) in the provider's action record."""

SCROLL_DIRECTIONS: dict[str, tuple[int, int]] = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
"""A named scroll direction -> the signs of ``(dx, dy)`` (positive: right / down), for providers that give a
direction and an amount apart (Anthropic ``scroll_direction``, UI-TARS ``direction``)."""


def table_entry(table: Mapping[str, ActionMap[A]], name: Any, what: str) -> ActionMap[A]:
    """``table[name]``. Raises AnswerError ``"unknown <what> <name>"`` when the table has no such entry (or the
    name is not a string, as a raw JSON field may be)."""
    entry = table.get(name) if isinstance(name, str) else None
    if entry is None:
        raise AnswerError(f"unknown {what} {name!r}")
    return entry


def arg(name: str) -> Read[dict[str, Any]]:
    """Reads the field ``name`` of a JSON action object (None when absent)."""
    return lambda a: a.get(name)


def click_at(point: Read[A], button: str = "left", count: int = 1) -> ActionMap[A]:
    """A click (:meth:`ActionBuilder.click`) at the point ``point`` reads (None: at the pointer)."""
    return lambda b, a: b.click(point(a), button=button, count=count)


def move_to(point: Read[A]) -> ActionMap[A]:
    """A pointer move (:meth:`ActionBuilder.move`) to the point ``point`` reads."""
    return lambda b, a: b.move(point(a))


def drag_between(start: Read[A], end: Read[A]) -> ActionMap[A]:
    """A drag (:meth:`ActionBuilder.drag`) from ``start`` (None: the pointer) to ``end``; ``start`` is read first."""
    return lambda b, a: b.drag(start(a), end(a))


def wait_seconds(name: str, default: float) -> ActionMap[dict[str, Any]]:
    """A wait of the field ``name`` in seconds (:meth:`ActionBuilder.wait`; ``default`` when the field is absent
    or null)."""
    def wait(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
        value = a.get(name)
        return b.wait(value if value is not None else default)
    return wait


def no_action(b: ActionBuilder, a: object) -> list[Action]:
    """An entry that does nothing (e.g. ``screenshot``: every step sends a fresh one anyway)."""
    return []


def refuse(names: Iterable[str], reason: str) -> dict[str, ActionMap[Any]]:
    """Entries for documented actions Lodestar cannot perform: each raises AnswerError ``"<name>: <reason>"`` (a
    failed step that tells the model why)."""
    def entry(name: str) -> ActionMap[Any]:
        def unsupported(b: ActionBuilder, a: object) -> list[Action]:
            raise AnswerError(f"{name}: {reason}")
        return unsupported
    return {name: entry(name) for name in names}


COORDINATE_ACTIONS: dict[str, ActionMap[dict[str, Any]]] = {
    "left_click": click_at(arg("coordinate")),
    "right_click": click_at(arg("coordinate"), button="right"),
    "middle_click": click_at(arg("coordinate"), button="middle"),  # refused by the builder: left and right only
    "double_click": click_at(arg("coordinate"), count=2),
    "triple_click": click_at(arg("coordinate"), count=3),
    "mouse_move": move_to(arg("coordinate")),
    "left_click_drag": drag_between(arg("start_coordinate"), arg("coordinate")),
    "type": lambda b, a: b.type(a.get("text")),
}
"""The pointer and typing actions of Anthropic's computer tool (PROVIDERS.md section 3), which Qwen-VL's
``computer_use`` function (section 4) repeats with the same names and fields: ``coordinate: [x, y]`` in the
model's space (absent: at the pointer), ``start_coordinate`` of a drag (absent: from the pointer), ``text``."""
