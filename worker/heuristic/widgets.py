"""Widgets the heuristic agent operates as a user does: date and time fields by segment, spinners by their arrows,
several options of a list box, date pickers paged to the month, menus that open on hover.

Each function reads the outline (``aria.py``) and returns the actions; ``grounding.py`` decides when to use them.
"""

from __future__ import annotations

import re

from worker.computer import Action, Target
from worker.heuristic.aria import AriaNode, target_for, text_present

HOVER_SECONDS = 0.5
"""Seconds to wait after pointing at a menu item for its submenu to open (jQuery UI menus wait 300 ms)."""
PICKER_SECONDS = 0.6
"""Seconds to let a date picker close (its animation) after a day is picked, before the next click."""


class WidgetError(Exception):
    """The widget is not as expected (the message says what is missing)."""


_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s*$")
_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*([AaPp])\.?\s*[Mm]\.?\s*$")


def typing(nodes: list[AriaNode], node: AriaNode, value: str, descriptor: str | None) -> list[Action]:
    """Actions that type ``value`` into ``node``. A date or time said to be one ("Enter 12/15/2011 as the date") goes
    into the field's segments as a user types it there: from the first segment (Left arrow), digits in order. A
    number into a spinner that shows a number: its arrow keys, as many times as the difference."""
    integer = re.compile(r"-?\d+")
    if node.role == "spinbutton" and integer.fullmatch(value.strip()) and integer.fullmatch(node.text.strip()):
        # a spinner is set with its arrow keys from the value it shows (many refuse typed digits)
        steps = int(value) - int(node.text)
        key = "ArrowUp" if steps > 0 else "ArrowDown"
        return [Action("click", target=target_for(nodes, node)), *(Action("key", keys=key) for _ in range(abs(steps)))]
    words = set(re.findall(r"[a-z0-9]+", (descriptor or "").lower()))
    date, time = _DATE.match(value), _TIME.match(value)
    segmented = None
    if date and "date" in words:
        segmented = value.strip()
    elif time and "time" in words:
        segmented = f"{int(time.group(1)):02d}{time.group(2)}{time.group(3).upper()}M"
    if segmented is None:
        return [Action("type", text=value, target=target_for(nodes, node))]
    return [Action("click", target=target_for(nodes, node)), *(Action("key", keys="ArrowLeft") for _ in range(3)),
            Action("type", text=segmented)]


def select_in_list(nodes: list[AriaNode], chosen: list[AriaNode]) -> list[Action]:
    """Select several options of one list box as a keyboard user does: click the first (it alone is selected), then
    move to each other one with Ctrl+Down (the selection stays) and add it with Ctrl+Space."""
    chosen = sorted({n.index: n for n in chosen}.values(), key=lambda n: n.index)
    actions = [Action("click", target=target_for(nodes, chosen[0]))]
    siblings = [n.index for n in nodes if n.role == "option" and n.parent == chosen[0].parent]
    at = siblings.index(chosen[0].index)
    for node in chosen[1:]:
        step = siblings.index(node.index) - at if node.index in siblings else 0
        actions.extend(Action("key", keys="Control+ArrowDown") for _ in range(step))
        actions.append(Action("key", keys="Control+Space"))
        at += step
    return actions


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_SHOWN_MONTH = re.compile(rf"\b({'|'.join(_MONTHS)})\s+(\d{{4}})\b", re.I)


def date_picker_step(nodes: list[AriaNode], month: int, day: int, year: int,
                     field: AriaNode | None) -> tuple[list[Action], bool]:
    """One move towards ``month``/``day``/``year`` in a date picker: open it from its ``field``, page towards the
    month with its Prev / Next controls, or click the day. Returns (actions, True once the day is clicked). The
    picker is read as a user reads it: the "Month YYYY" it shows and its day links.

    Raises:
        WidgetError: the picker is closed and there is no field, or it lacks the control or day needed.
    """
    shown = next((m for n in nodes if n.role in ("text", "generic", "heading", "status") and not n.name
                  for m in [_SHOWN_MONTH.search(n.text)] if m), None)
    days = [n for n in nodes if n.role == "link" and n.name.isdigit()]
    if shown is None or not days:  # closed: open it from the date field
        if field is None:
            raise WidgetError("no date field to open a date picker from")
        return [Action("click", target=target_for(nodes, field))], False
    months = (year * 12 + month - 1) - (int(shown.group(2)) * 12 + _MONTHS.index(shown.group(1).lower()))
    if months:
        word = "Next" if months > 0 else "Prev"
        if not text_present(nodes, word):
            raise WidgetError(f"the date picker has no {word} control")
        return [Action("click", target=Target("text", word)) for _ in range(min(abs(months), 12))], False
    node = next((n for n in days if int(n.name) == day), None)
    if node is None:
        raise WidgetError(f"the date picker shows no day {day}")
    # the picker closes with an animation that would swallow the next click
    return [Action("click", target=target_for(nodes, node)), Action("wait", seconds=PICKER_SECONDS)], True


def slider_keys(nodes: list[AriaNode], value: str) -> list[Action]:
    """Set an unlabelled slider (one the outline does not show, such as a jQuery UI handle) to ``value`` from the
    keyboard: Tab to it (it is the page's first stop) and press the arrow keys as many times as ``value`` differs from
    the number shown beside it (the only text that is a bare number).

    Raises:
        WidgetError: ``value`` is not a whole number, or no single bare number is shown.
    """
    integer = re.compile(r"-?\d+")
    if not integer.fullmatch(value.strip()):
        raise WidgetError(f"cannot slide to {value!r}")
    shown = [n.text.strip() for n in nodes if n.role in ("text", "generic", "paragraph") and integer.fullmatch(
        n.text.strip())]
    if len(shown) != 1:
        raise WidgetError("no value is shown beside the slider")
    steps = int(value) - int(shown[0])
    key = "ArrowRight" if steps > 0 else "ArrowLeft"
    return [Action("key", keys="Tab"), *(Action("key", keys=key) for _ in range(abs(steps)))]
