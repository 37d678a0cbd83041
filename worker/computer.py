"""The target machine an agent drives: the ``Computer`` protocol, the action vocabulary, and the Playwright browser.

Actions are the one internal schema every policy maps onto (``Action``); they are dispatched through an allowlist
(``ACTIONS``), never by looking up a method named by a model. Every action returns a frozen ``ActionResult``;
expected failures (an element not found, a navigation refused) become ``ActionResult(ok=False)`` at one boundary,
:func:`execute`, so the loop never sees a Playwright exception.

Coordinates are CSS pixels of the viewport, origin top-left. Screenshots are JPEG bytes at the viewport size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from shared.netguard import NetworkGuard

log = logging.getLogger(__name__)

__all__ = ["ACTIONS", "CLICKABLE_ROLES", "FIELD_ROLES", "TEXT_FIELD_ROLES", "Action", "ActionError", "ActionResult",
           "Computer", "Filtered", "NetworkGuard", "Observation", "Target", "execute", "normalize_key"]

ActionType = Literal[
    "click", "double_click", "triple_click", "right_click", "scroll", "type", "key", "move", "drag", "wait",
    "navigate", "select", "done", "fail",
]


@dataclass(frozen=True)
class Target:
    """An element named the way a user would name it, resolved by the computer to a point.

    ``by``: "text" (visible text or accessible name of anything clickable), "label" (a form field's label,
    placeholder or accessible name), or "role" (``role`` plus ``name``, as in the accessibility tree).
    """

    by: Literal["text", "label", "role"]
    name: str
    role: str | None = None
    exact: bool = True
    nth: int = 0
    """Which of several visible matches, in document order (0: the first)."""

    def describe(self) -> str:
        which = f" #{self.nth + 1}" if self.nth else ""
        return f'{self.role or self.by} "{self.name}"{which}'


# --- roles: one table for the browser and the heuristic agent ------------------------------------------------------
# The browser tries these roles, in this order, for a Target by "text" (CLICKABLE_ROLES) or by "label" (FIELD_ROLES),
# and takes the first visible match; the heuristic agent (worker/heuristic/) grounds outline nodes of these roles as
# things to click or fields to fill, then names them with Target("role", ...), which resolves any role.
# The two copies had drifted apart; reconciled so:
# - clickable: the browser's nine roles keep their order (it decides what a "text" Target clicks); menuitemcheckbox
#   and menuitemradio, which the heuristic already clicked, come last: a match of the nine is still picked first,
#   and such a menu item now wins over the label or plain text that matched before.
# - fields: combobox (a <select>, or an input with suggestions) is a field: the browser finds it by its label and
#   the heuristic can focus it; but the heuristic types only into TEXT_FIELD_ROLES, as before (a <select> is set with
#   the "select" action, not typed into).
CLICKABLE_ROLES: tuple[str, ...] = (
    "button", "link", "checkbox", "radio", "tab", "menuitem", "option", "switch", "treeitem",
    "menuitemcheckbox", "menuitemradio",
)
"""ARIA roles of elements a user clicks, in the order a Target by "text" tries them."""
FIELD_ROLES: tuple[str, ...] = ("textbox", "searchbox", "combobox", "spinbutton")
"""ARIA roles of form fields, in the order a Target by "label" tries them."""
TEXT_FIELD_ROLES: tuple[str, ...] = ("textbox", "searchbox", "spinbutton")
"""The fields that take typed text: ``FIELD_ROLES`` without combobox."""


@dataclass(frozen=True)
class Action:
    """One step's action. Fields used per ``type``:

    - click / double_click / triple_click / right_click / move: ``x``, ``y`` or ``target``
    - scroll: ``dx``, ``dy`` (pixels; positive dy scrolls down) at ``x``, ``y`` (default: viewport centre)
    - type: ``text`` (typed into the focused element, or into ``target`` after clicking it)
    - key: ``keys`` (one chord such as "Enter" or "Ctrl+A"; names normalised by :func:`normalize_key`)
    - drag: ``x``, ``y`` to ``x2``, ``y2``
    - wait: ``seconds``
    - navigate: ``url``
    - select: ``target`` (a <select>) and ``text`` (the option's label)
    - done: ``text`` is the result (and ``value`` a JSON answer the policy parsed, for a task with an
      ``output_schema``); fail: ``text`` is the reason. Both end the episode and touch nothing.
    """

    type: ActionType
    x: int | None = None
    y: int | None = None
    x2: int | None = None
    y2: int | None = None
    dx: int = 0
    dy: int = 0
    text: str | None = None
    keys: str | None = None
    url: str | None = None
    seconds: float = 0.0
    target: Target | None = None
    value: Any = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Action:
        """The action of its JSON form (:meth:`to_dict`'s shape, e.g. ``{"type": "click", "x": 200, "y": 150}``;
        ``target`` as ``{"by", "name", "role"?, "exact"?, "nth"?}``), as the API validated it
        (``shared.schemas.ActionSchema``). Raises ValueError (TypeError inside) for a field it does not know."""
        fields = dict(data)
        target = fields.pop("target", None)
        try:
            return cls(**fields, target=Target(**target) if isinstance(target, dict) else None)
        except TypeError as exc:
            raise ValueError(f"not an action: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for events: only the fields that are set (``value``: whenever it is not None; ``x`` and
        ``y`` also at 0, a point on the screen's edge)."""
        out: dict[str, Any] = {"type": self.type}
        for k, v in asdict(self).items():
            if k != "type" and (v not in (None, 0, 0.0, "") or (k in ("value", "x", "y") and v is not None)):
                out[k] = v
        return out


@dataclass(frozen=True)
class ActionResult:
    """What an action did. ``ok=False`` carries a human-readable ``error``; ``x``/``y`` is where a click landed.
    ``blocked``: what the egress proxy refused since the previous action ("<url>: <reason naming the host>" each: a
    subresource, a fetch, a WebSocket), whether or not the action itself succeeded."""

    ok: bool
    error: str | None = None
    x: int | None = None
    y: int | None = None
    blocked: tuple[str, ...] | None = None


@dataclass
class Observation:
    """What the agent sees before it decides.

    ``screenshot``: JPEG bytes of the viewport; ``accessibility``: the page's ARIA snapshot (Playwright's YAML
    outline: ``- button "OK"``, ``- textbox "Name"`` ...) or None where the computer has none.
    """

    screenshot: bytes
    url: str
    title: str
    width: int
    height: int
    accessibility: str | None = None
    taken_at: float = field(default_factory=time.time)


class Computer(Protocol):
    """A machine an agent can see and act on. One instance serves one task at a time.

    Methods raise on failure (Playwright errors, ``ActionError``); :func:`execute` turns those into results.
    """

    width: int
    height: int

    def observe(self, accessibility: bool = True) -> Observation: ...
    def screenshot(self) -> bytes: ...
    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None: ...
    def double_click(self, x: int, y: int) -> None: ...
    def scroll(self, x: int, y: int, dx: int, dy: int) -> None: ...
    def type(self, text: str) -> None: ...
    def key(self, keys: str) -> None: ...
    def move(self, x: int, y: int) -> None: ...
    def drag(self, x: int, y: int, x2: int, y2: int) -> None: ...
    def wait(self, seconds: float) -> None: ...
    def navigate(self, url: str) -> None: ...
    def locate(self, target: Target) -> tuple[int, int]: ...
    def select(self, target: Target, option: str) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Filtered(Protocol):
    """A computer whose network goes through the egress proxy (``worker/egress/``)."""

    def take_refusals(self) -> list[str]:
        """What the proxy refused since the last call: "<url>: <reason>" each."""
        ...


class ActionError(Exception):
    """An expected failure of an action (element not found, URL refused): becomes ``ActionResult(ok=False)``."""


# --- keys ----------------------------------------------------------------------------------------------------
_KEY_NAMES = {
    "ctrl": "Control", "control": "Control", "cmd": "Meta", "command": "Meta", "meta": "Meta", "super": "Meta",
    "win": "Meta", "alt": "Alt", "option": "Alt", "shift": "Shift", "enter": "Enter", "return": "Enter",
    "esc": "Escape", "escape": "Escape", "tab": "Tab", "space": " ", "backspace": "Backspace", "delete": "Delete",
    "del": "Delete", "up": "ArrowUp", "down": "ArrowDown", "left": "ArrowLeft", "right": "ArrowRight",
    "arrowup": "ArrowUp", "arrowdown": "ArrowDown", "arrowleft": "ArrowLeft", "arrowright": "ArrowRight",
    "pageup": "PageUp", "pagedown": "PageDown", "page_up": "PageUp", "page_down": "PageDown", "home": "Home",
    "end": "End", "insert": "Insert",
}


def normalize_key(chord: str) -> str:
    """Map a chord as models and people write it ("ctrl+a", "Return", "CMD+shift+t") to Playwright's names.

    Returns e.g. "Control+a". Single characters keep their case; F-keys become "F5".
    Raises ``ActionError`` for an empty chord.
    """
    parts = [p.strip() for p in chord.replace("-", "+").split("+")] if len(chord) > 1 else [chord]
    if not parts or any(p == "" for p in parts):
        raise ActionError(f"bad key chord {chord!r}")
    out = []
    for part in parts:
        low = part.lower()
        if low in _KEY_NAMES:
            out.append(_KEY_NAMES[low])
        elif len(low) in (2, 3) and low[0] == "f" and low[1:].isdigit():
            out.append(low.upper())
        else:
            out.append(part if len(part) == 1 else part[0].upper() + part[1:])
    return "+".join(out)


# --- dispatch ----------------------------------------------------------------------------------------------------
def _point(computer: Computer, action: Action) -> tuple[int, int]:
    if action.target is not None:
        return computer.locate(action.target)
    if action.x is None or action.y is None:
        raise ActionError(f"{action.type} needs x and y or a target")
    if not (0 <= action.x < computer.width and 0 <= action.y < computer.height):
        raise ActionError(f"point ({action.x}, {action.y}) is outside the {computer.width}x{computer.height} screen")
    return action.x, action.y


def _click(c: Computer, a: Action) -> ActionResult:
    x, y = _point(c, a)
    c.click(x, y)
    return ActionResult(True, x=x, y=y)


def _double_click(c: Computer, a: Action) -> ActionResult:
    x, y = _point(c, a)
    c.double_click(x, y)
    return ActionResult(True, x=x, y=y)


def _triple_click(c: Computer, a: Action) -> ActionResult:
    x, y = _point(c, a)
    c.click(x, y, count=3)
    return ActionResult(True, x=x, y=y)


def _right_click(c: Computer, a: Action) -> ActionResult:
    x, y = _point(c, a)
    c.click(x, y, button="right")
    return ActionResult(True, x=x, y=y)


def _move(c: Computer, a: Action) -> ActionResult:
    x, y = _point(c, a)
    c.move(x, y)
    return ActionResult(True, x=x, y=y)


def _scroll(c: Computer, a: Action) -> ActionResult:
    x = a.x if a.x is not None else c.width // 2
    y = a.y if a.y is not None else c.height // 2
    c.scroll(x, y, a.dx, a.dy)
    return ActionResult(True, x=x, y=y)


def _type(c: Computer, a: Action) -> ActionResult:
    if a.text is None:
        raise ActionError("type needs text")
    if a.target is not None:
        x, y = c.locate(a.target)
        c.click(x, y)
        c.key("Control+a")
        c.type(a.text)
        return ActionResult(True, x=x, y=y)
    c.type(a.text)
    return ActionResult(True)


def _key(c: Computer, a: Action) -> ActionResult:
    if not a.keys:
        raise ActionError("key needs keys")
    c.key(normalize_key(a.keys))
    return ActionResult(True)


def _drag(c: Computer, a: Action) -> ActionResult:
    if None in (a.x, a.y, a.x2, a.y2):
        raise ActionError("drag needs x, y, x2 and y2")
    c.drag(a.x, a.y, a.x2, a.y2)  # type: ignore[arg-type]
    return ActionResult(True, x=a.x2, y=a.y2)


def _wait(c: Computer, a: Action) -> ActionResult:
    c.wait(min(max(a.seconds, 0.0), 60.0))
    return ActionResult(True)


def _navigate(c: Computer, a: Action) -> ActionResult:
    if not a.url:
        raise ActionError("navigate needs url")
    c.navigate(a.url)
    return ActionResult(True)


def _select(c: Computer, a: Action) -> ActionResult:
    if a.target is None or a.text is None:
        raise ActionError("select needs a target and the option text")
    c.select(a.target, a.text)
    return ActionResult(True)


def _terminal(c: Computer, a: Action) -> ActionResult:
    return ActionResult(True)


ACTIONS: dict[str, Callable[[Computer, Action], ActionResult]] = {
    "click": _click, "double_click": _double_click, "triple_click": _triple_click, "right_click": _right_click,
    "move": _move, "scroll": _scroll, "type": _type, "key": _key, "drag": _drag, "wait": _wait,
    "navigate": _navigate, "select": _select, "done": _terminal, "fail": _terminal,
}
"""The allowlist: the only actions a policy can make a computer perform."""


def execute(computer: Computer, action: Action) -> ActionResult:
    """Perform ``action`` through the allowlist. Never raises for an action's own failure: returns ``ok=False``.

    On a :class:`Filtered` computer the result's ``blocked`` lists what the egress proxy refused since the previous
    action (a refused navigation is also the action's ``error``)."""
    result = _perform(computer, action)
    if isinstance(computer, Filtered):
        refused = computer.take_refusals()
        if refused:
            result = replace(result, blocked=tuple(refused))
    return result


def _perform(computer: Computer, action: Action) -> ActionResult:
    handler = ACTIONS.get(action.type)
    if handler is None:
        return ActionResult(False, error=f"action {action.type!r} is not allowed")
    try:
        return handler(computer, action)
    except ActionError as exc:
        return ActionResult(False, error=str(exc))
    except Exception as exc:  # Playwright's errors (timeouts, detached elements) are expected at this boundary
        if exc.__class__.__module__.startswith("playwright"):
            return ActionResult(False, error=f"{action.type} failed: {str(exc).splitlines()[0]}")
        raise
