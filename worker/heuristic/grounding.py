"""Grounding: the heuristic agent's intents turned into ``Action`` s on the elements of the current outline.

:func:`ground` takes the outline (``aria.py``: :func:`parse_aria`) and the intents still to do (``instructions.py``:
:func:`parse_instruction`) and returns one batch of actions plus the intents left for a later step. An element is
named by ``Target("role", name, role=..., nth=k)``: the k-th node of that role and exact name in the outline, which
is the k-th visible match of Playwright's ``get_by_role`` (an unnamed field is "the 3rd unnamed textbox"); text
that is no element of its own by ``Target("text", ...)``. Values the instruction says to read off the page (a word,
a copied text, a table cell) come from ``reading.py``. Which roles are fields is the table in
``worker/computer.py``, shared with the browser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from worker.computer import FIELD_ROLES, TEXT_FIELD_ROLES, Action, Target
from worker.heuristic.aria import AriaNode, field_label, find_clickable, norm_text, target_for, text_present
from worker.heuristic.instructions import (
    Autocomplete,
    Choose,
    Click,
    ClickResult,
    Expand,
    FillFromTable,
    Focus,
    Hover,
    Intent,
    PickDate,
    Read,
    TypeText,
    Wait,
    role_word,
)
from worker.heuristic.reading import ReadError, nth_word, source_node, table_value
from worker.heuristic.widgets import (
    HOVER_SECONDS,
    WidgetError,
    date_picker_step,
    select_in_list,
    slider_keys,
    typing,
)


class GroundingError(Exception):
    """An intent names nothing on the page (the message says what was looked for)."""


@dataclass
class _Batch:
    """The actions grounded so far for one decision, and what they leave behind."""

    actions: list[Action] = field(default_factory=list)
    focus: int | None = None
    """Outline index of the field that has the keyboard focus after ``actions`` (None: unknown)."""
    stop: bool = False
    """The last action may change the page: ground the rest on the next observation."""


_GENERIC_FIELD_WORDS = frozenset({
    "the", "a", "an", "text", "field", "fields", "box", "boxes", "textbox", "textboxes", "input", "inputs", "area",
    "entry", "form", "only", "one", "this", "that", "empty", "blank", "textfield", "textarea", "search",
    "all", "both", "each", "every", "two",
})
"""Words of a field descriptor that name no field in particular ("the text field", "both boxes")."""
_FIELD_ALIASES = {
    "username": ("username", "user name", "user", "login", "email", "e-mail", "account"),
    "password": ("password", "pass", "passcode", "pwd"),
    "email": ("email", "e-mail", "mail"),
}
"""What the label of a username, password or email field may say instead."""


def _field_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower())]


_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
             "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "last": -1}


def _ordinal(words: list[str]) -> tuple[int | None, list[str]]:
    """Pull an ordinal ("2nd", "third", "last") out of words: (1-based position or -1 for last, other words)."""
    for i, w in enumerate(words):
        if w in _ORDINALS:
            return _ORDINALS[w], words[:i] + words[i + 1:]
    return None, words


def _nth(items: list[AriaNode], position: int | None) -> list[AriaNode]:
    if position is None:
        return items
    if position == -1:
        return items[-1:]
    return items[position - 1: position]


def _match_fields(nodes: list[AriaNode], fields: list[AriaNode], descriptor: str | None) -> list[AriaNode]:
    """Fields matching a descriptor, best first; all fields (document order) for a generic one.

    An ordinal ("the 2nd text field", "the last input") picks that one of the matching fields in document order.
    """
    position, words = _ordinal(_field_words(descriptor or ""))
    words = [w for w in words if w not in _GENERIC_FIELD_WORDS]
    if position is not None:
        matched = _match_fields(nodes, fields, " ".join(words)) if words else fields
        return _nth(sorted(matched, key=lambda n: n.index), position)
    if not words:
        return fields
    wanted = " ".join(words)
    scored: list[tuple[float, int, AriaNode]] = []
    for f in fields:
        label_words = _field_words(field_label(nodes, f))
        label = " ".join(label_words)
        if not label:
            continue
        if label == wanted:
            score = 3.0
        elif all(w in label_words for w in words):
            score = 2.0 - 0.1 * (len(label_words) - len(words))
        else:
            aliases = next((a for k, a in _FIELD_ALIASES.items() if wanted == k or wanted in a), ())
            if any(a in label for a in aliases):
                score = 1.0
            elif any(w in label_words for w in words):
                score = 0.5
            else:
                continue
        scored.append((score, f.index, f))
    scored.sort(key=lambda t: (-t[0], t[1]))
    if scored:
        return [f for _, _, f in scored]
    # no label matches: username/password by position, as login forms are laid out
    if wanted in _FIELD_ALIASES["username"] and fields:
        return [fields[0]]
    if wanted in _FIELD_ALIASES["password"] and len(fields) >= 2:
        return [fields[1]]
    if len(fields) == 1:
        return fields
    return []


def _ground_type(nodes: list[AriaNode], intents: list[TypeText], batch: _Batch) -> None:
    fields = [n for n in nodes if n.role in TEXT_FIELD_ROLES]
    if not fields and len(intents) == 1 and "slider" in _field_words(intents[0].field or ""):
        try:  # 'Select 11 with the slider': a slider the outline does not show, set from the keyboard
            batch.actions.extend(slider_keys(nodes, intents[0].value))
        except WidgetError as exc:
            raise GroundingError(str(exc)) from None
        return
    if not fields:
        raise GroundingError("there is no text field on the page")
    plan: dict[int, tuple[str, str | None]] = {}
    for intent in intents:
        if intent.recall:
            raise GroundingError("nothing was read to type")
        candidates = [f for f in fields if f.index not in intent.skip] or fields
        matches = _match_fields(nodes, candidates, intent.field)
        if not matches:
            raise GroundingError(f'no field matches "{intent.field}"')
        if intent.skip:  # pasting: into an empty field rather than one that shows text
            matches = [f for f in matches if not f.text.strip()] or matches
        if intent.every:
            chosen = matches if len(matches) >= 2 else candidates
            for f in chosen:
                plan.setdefault(f.index, (_CLIPBOARD if intent.paste else intent.value, intent.field))
        else:
            free = [f for f in matches if f.index not in plan] or matches
            plan[free[0].index] = (_CLIPBOARD if intent.paste else intent.value, intent.field)
    for index in sorted(plan):  # document order
        value, descriptor = plan[index]
        if value == _CLIPBOARD:
            batch.actions.extend([Action("click", target=target_for(nodes, nodes[index])),
                                  Action("key", keys="Control+a"), Action("key", keys="Control+v")])
        else:
            batch.actions.extend(typing(nodes, nodes[index], value, descriptor))
        batch.focus = index


_CLIPBOARD = "\x00clipboard"
"""The planned value of a field that gets the clipboard pasted into it."""


def _recall(intents: list[Intent], value: str, source: int | None, paste: bool) -> list[Intent]:
    """The intents with ``value`` (or, ``paste``, the clipboard) filled into the next ``TypeText`` that recalls
    what was read; it will not type into the ``source`` field the value came from."""
    out = list(intents)
    for i, intent in enumerate(out):
        if isinstance(intent, TypeText) and intent.recall:
            out[i] = replace(intent, value=value, recall=False, paste=paste,
                             skip=(source,) if source is not None else ())
            break
    return out


def _read(nodes: list[AriaNode], intent: Read, batch: _Batch) -> tuple[str, int | None]:
    """The value ``intent`` reads and the outline index of the field it came from (None: not a field). Copying a
    field's text copies it for real (click, Ctrl+A, Ctrl+C: the clipboard keeps what the outline cannot show, such
    as trailing spaces)."""
    try:
        if intent.what == "cell":
            value = table_value(nodes, intent.key or "")
            if value is None:
                raise GroundingError(f'no table gives a value for "{intent.key}"')
            return value, None
        node = source_node(nodes, intent.source)
        field = node.index if node.role in TEXT_FIELD_ROLES else None
        if intent.what == "word":
            return nth_word(nodes, intent.source, intent.position or 1), field
        if field is not None:
            batch.actions.extend([Action("click", target=target_for(nodes, node)), Action("key", keys="Control+a"),
                                  Action("key", keys="Control+c")])
        return (node.text or node.name).strip(), field
    except ReadError as exc:
        raise GroundingError(str(exc)) from None


def _ground_hover(nodes: list[AriaNode], intent: Hover, batch: _Batch) -> None:
    node = find_clickable(nodes, intent.target, "menuitem")
    if node is None:
        raise GroundingError(f'nothing called "{intent.target}" to point at')
    # its submenu opens after the menu's delay: ground the rest on the next observation
    batch.actions.extend([Action("move", target=target_for(nodes, node)), Action("wait", seconds=HOVER_SECONDS)])
    batch.stop = True


def _ground_fill_from_table(nodes: list[AriaNode], batch: _Batch) -> None:
    typed = 0
    for node in nodes:
        if node.role in TEXT_FIELD_ROLES:
            value = table_value(nodes, field_label(nodes, node))
            if value is not None:
                batch.actions.append(Action("type", text=value, target=target_for(nodes, node)))
                typed += 1
    if not typed:
        raise GroundingError("no field has a label the table gives a value for")


def _ground_expand(nodes: list[AriaNode], intent: Expand, batch: _Batch) -> None:
    """Click the first collapsed section, menu or folder whose name has the word(s) of ``intent.what``."""
    words = _field_words(intent.what)
    for node in nodes:
        if node.role in ("tab", "button", "link", "treeitem", "menuitem", "heading") and node.name \
                and all(w in _field_words(node.name) for w in words) and "expanded" not in node.attrs:
            batch.actions.append(Action("click", target=target_for(nodes, node)))
            batch.stop = True
            return
    raise GroundingError(f'nothing called "{intent.what}" to expand')


def _ground_click(nodes: list[AriaNode], intent: Click, batch: _Batch) -> None:
    for alt in intent.alternatives:
        if alt.startswith("key:") and find_clickable(nodes, intent.target, intent.role) is None:
            batch.actions.append(Action("key", keys=alt[4:]))
            return
    node = find_clickable(nodes, intent.target, intent.role)
    for alt in intent.alternatives:
        if node is None and not alt.startswith("key:"):
            node = find_clickable(nodes, alt, intent.role)
    if node is None and intent.role == "button" and intent.alternatives:
        buttons = [n for n in nodes if n.role == "button" and n.name]
        if len(buttons) == 1:
            node = buttons[0]
    if node is None:  # "the button", "the 2nd link": an element named by its role alone
        node = _by_role_word(nodes, intent.target, intent.role)
    if node is not None:
        batch.actions.append(Action("click", target=target_for(nodes, node)))
        batch.focus = None
        batch.stop = node.role in ("link", "tab", "menuitem", "treeitem")
        return
    if text_present(nodes, intent.target):
        batch.actions.append(Action("click", target=Target("text", intent.target)))
        batch.focus = None
        batch.stop = True
        return
    raise GroundingError(f'nothing called "{intent.target}" to click on the page')


def _by_role_word(nodes: list[AriaNode], words_text: str, role_hint: str | None) -> AriaNode | None:
    """The node "the 2nd radio button" or "the button" names by its role and position alone, or None."""
    position, words = _ordinal(_field_words(words_text))
    role = role_word(" ".join(words)) if words else role_hint
    if role and len(words) <= 2:
        picked = _nth([n for n in nodes if n.role == role], position or 1)
        if picked:
            return picked[0]
    return None


_CHOOSABLE = ("checkbox", "radio", "switch", "option", "menuitemcheckbox", "menuitemradio", "treeitem", "tab")


def _ground_choose(nodes: list[AriaNode], intent: Choose, batch: _Batch) -> None:
    choosable = [n for n in nodes if n.role in _CHOOSABLE and n.name]
    in_list: list[AriaNode] = []  # options of a list box (not a drop-down): selected together below
    for item in intent.items:
        node = next((n for n in choosable if n.name == item), None) or next(
            (n for n in choosable if norm_text(n.name) == norm_text(item)), None)
        if node is None:
            node = _by_role_word(nodes, item, None)
            if node is not None and node.role not in _CHOOSABLE:
                node = None
        if node is None:
            if text_present(nodes, item):
                batch.actions.append(Action("click", target=Target("text", item)))
                continue
            raise GroundingError(f'nothing called "{item}" to select on the page')
        if node.role == "option":
            parent = nodes[node.parent] if node.parent is not None else None
            if parent is not None and parent.role == "combobox":
                if "selected" not in node.attrs:
                    batch.actions.append(Action("select", text=node.name, target=target_for(nodes, parent)))
                continue
            if parent is not None and parent.role == "listbox":
                in_list.append(node)
                continue
        if node.role in ("checkbox", "radio", "switch", "menuitemcheckbox", "menuitemradio") and node.checked:
            continue
        batch.actions.append(Action("click", target=target_for(nodes, node)))
    if in_list:
        batch.actions.extend(select_in_list(nodes, in_list))
    batch.focus = None


def _ground_focus(nodes: list[AriaNode], intent: Focus, batch: _Batch) -> None:
    fields = [n for n in nodes if n.role in FIELD_ROLES]
    matches = _match_fields(nodes, fields, intent.field) if fields else []
    if not matches:
        raise GroundingError(f'no field matches "{intent.field or "the text field"}"')
    node = matches[0]
    batch.actions.append(Action("click", target=target_for(nodes, node)))
    batch.focus = node.index


def _ground_autocomplete(nodes: list[AriaNode], intent: Autocomplete, batch: _Batch) -> Autocomplete | None:
    """First phase: type the prefix (returns the intent for the second phase). Second: click the suggestion."""
    if not intent.typed:
        _ground_type(nodes, [TypeText(intent.prefix, intent.field)], batch)
        batch.stop = True  # the suggestions appear after typing
        return replace(intent, typed=True)
    prefix, suffix = intent.prefix.lower(), intent.suffix.lower()
    items = [n for n in nodes if n.role in ("listitem", "option", "menuitem", "gridcell", "row") and n.label()]
    starts = [n for n in items if n.label().strip().lower().startswith(prefix)]
    both = [n for n in starts if n.label().strip().lower().endswith(suffix)]
    if not starts:
        raise GroundingError(f'no suggestion starting with "{intent.prefix}" is shown')
    pick = (both or starts)[0]
    target = target_for(nodes, pick) if pick.name else Target("text", pick.text.strip())
    batch.actions.append(Action("click", target=target))
    batch.focus = None
    return None


def _ground_pick_date(nodes: list[AriaNode], intent: PickDate, batch: _Batch) -> bool:
    fields = [n for n in nodes if n.role in TEXT_FIELD_ROLES]
    picked = _match_fields(nodes, fields, "date") if fields else []
    try:
        actions, done = date_picker_step(nodes, intent.month, intent.day, intent.year, picked[0] if picked else None)
    except WidgetError as exc:
        raise GroundingError(str(exc)) from None
    batch.actions.extend(actions)
    batch.stop = True
    return done


def _ground_result(nodes: list[AriaNode], intent: ClickResult, batch: _Batch) -> ClickResult | None:
    """Click the result, or the page of results that holds it (returns the intent for the next page)."""
    in_lists = {n.index for n in nodes if n.role == "link" and n.parent is not None
                and nodes[n.parent].role == "listitem"}
    results = [n for n in nodes if n.role == "link" and n.name and n.index not in in_lists]
    if not results:
        raise GroundingError("no search results are shown")
    wanted = intent.position - intent.skipped
    batch.stop = True
    if 0 < wanted <= len(results):
        batch.actions.append(Action("click", target=target_for(nodes, results[wanted - 1])))
        return None
    page = (intent.position - 1) // len(results) + 1
    pager = next((n for n in nodes if n.index in in_lists and n.name == str(page)), None)
    if pager is None or intent.skipped:
        raise GroundingError(f"no page of results holds result #{intent.position}")
    batch.actions.append(Action("click", target=target_for(nodes, pager)))
    return replace(intent, skipped=(page - 1) * len(results))


def ground(nodes: list[AriaNode], intents: list[Intent]) -> tuple[list[Action], list[Intent]]:
    """Ground as many leading intents as the current outline allows, as one batch of actions.

    Returns (actions, the intents left for later steps). Consecutive ``TypeText`` intents are grounded together so
    fields are filled in document order. Stops after a click that may change the page (a link, a tab).
    Raises ``GroundingError`` when the first intent names nothing on the page.
    """
    batch = _Batch()
    used = 0
    while used < len(intents) and not batch.stop:
        intent = intents[used]
        try:
            if isinstance(intent, PickDate):
                if not _ground_pick_date(nodes, intent, batch):
                    return batch.actions, intents[used:]
                used += 1
                continue
            if isinstance(intent, ClickResult):
                after = _ground_result(nodes, intent, batch)
                if after is not None:
                    return batch.actions, [after, *intents[used + 1:]]
                used += 1
                continue
            if isinstance(intent, Autocomplete):
                second = _ground_autocomplete(nodes, intent, batch)
                if second is not None:
                    return batch.actions, [second, *intents[used + 1:]]
                used += 1
                continue
            if isinstance(intent, TypeText):
                run: list[TypeText] = []
                for later in intents[used:]:
                    if not isinstance(later, TypeText):
                        break
                    run.append(later)
                _ground_type(nodes, run, batch)
                used += len(run)
                # look at the form before submitting it: typing may have brought up something to deal with first
                batch.stop = used < len(intents) and isinstance(intents[used], Click)
                continue
            if isinstance(intent, Read):
                value, source = _read(nodes, intent, batch)
                copied = intent.what == "text" and source is not None
                intents = [*intents[: used + 1], *_recall(intents[used + 1:], value, source, copied)]
            elif isinstance(intent, Hover):
                _ground_hover(nodes, intent, batch)
            elif isinstance(intent, Wait):
                batch.actions.append(Action("wait", seconds=intent.seconds))
            elif isinstance(intent, FillFromTable):
                _ground_fill_from_table(nodes, batch)
            elif isinstance(intent, Expand):
                _ground_expand(nodes, intent, batch)
            elif isinstance(intent, Click):
                _ground_click(nodes, intent, batch)
            elif isinstance(intent, Choose):
                _ground_choose(nodes, intent, batch)
            elif isinstance(intent, Focus):
                _ground_focus(nodes, intent, batch)
            else:
                batch.actions.append(Action("key", keys=intent.keys))
        except GroundingError:
            if isinstance(intent, Click) and intent.optional:
                used += 1
                continue
            if used == 0:
                raise
            break  # the rest may appear after these actions: try again on the next observation
        used += 1
    return batch.actions, intents[used:]
