"""Grounding: the heuristic agent's intents turned into ``Action`` s on the elements of the current outline.

:func:`ground` takes the outline (``aria.py``: :func:`parse_aria`) and the intents still to do (``instructions.py``:
:func:`parse_instruction`) and returns one batch of actions plus the intents left for a later step. An element is
named by ``Target("role", name, role=...)`` when that picks exactly the node meant (the browser resolves it with
Playwright's ``get_by_role``, first match in document order), else by ``Target("text", ...)``; a field that no
Target can name is reached with the Tab key from one that can. Which roles are fields is the table in
``worker/computer.py``, shared with the browser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from worker.computer import FIELD_ROLES, TEXT_FIELD_ROLES, Action, Target
from worker.heuristic.aria import FOCUSABLE_ROLES, AriaNode, field_label, find_clickable, norm_text, text_present
from worker.heuristic.instructions import Autocomplete, Choose, Click, Focus, Intent, TypeText, role_word


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


def _target_for(node: AriaNode) -> Target:
    return Target("role", node.name, role=node.role)


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


def _directly_targetable(nodes: list[AriaNode], node: AriaNode) -> bool:
    """True when Target(role, name) picks this node: it is the first of its role with exactly its name."""
    first = next(n for n in nodes if n.role == node.role and n.name == node.name)
    return first.index == node.index


def _reach(nodes: list[AriaNode], node: AriaNode, batch: _Batch) -> tuple[list[Action], bool]:
    """Actions that put the keyboard focus in ``node``; the flag says they already cleared it for typing."""
    if _directly_targetable(nodes, node):
        return [], True
    # Tab from the focused field, or from the nearest earlier field a Target can name
    start: AriaNode | None = None
    pre: list[Action] = []
    if batch.focus is not None and batch.focus < node.index:
        start = nodes[batch.focus]
    else:
        for prev in reversed(nodes[: node.index]):
            if prev.role in FOCUSABLE_ROLES and prev.role not in ("link", "button") and _directly_targetable(nodes,
                                                                                                            prev):
                start = prev
                break
        if start is None:
            raise GroundingError(f"cannot reach the {node.role} #{node.index}: nothing before it has a name")
        pre.append(Action("click", target=_target_for(start)))
    tabs = 1 + sum(1 for n in nodes[start.index + 1: node.index] if n.role in FOCUSABLE_ROLES)
    pre.extend(Action("key", keys="Tab") for _ in range(tabs))
    return pre, False


def _ground_type(nodes: list[AriaNode], intents: list[TypeText], batch: _Batch) -> None:
    fields = [n for n in nodes if n.role in TEXT_FIELD_ROLES]
    if not fields:
        raise GroundingError("there is no text field on the page")
    plan: dict[int, str] = {}
    for intent in intents:
        matches = _match_fields(nodes, fields, intent.field)
        if not matches:
            raise GroundingError(f'no field matches "{intent.field}"')
        if intent.every:
            chosen = matches if len(matches) >= 2 else fields
            for f in chosen:
                plan.setdefault(f.index, intent.value)
        else:
            free = [f for f in matches if f.index not in plan] or matches
            plan[free[0].index] = intent.value
    for index in sorted(plan):  # document order, so Tab moves forward
        node = nodes[index]
        pre, direct = _reach(nodes, node, batch)
        batch.actions.extend(pre)
        if direct:
            batch.actions.append(Action("type", text=plan[index], target=_target_for(node)))
        else:
            batch.actions.extend([Action("key", keys="Control+a"), Action("type", text=plan[index])])
        batch.focus = index


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
        position, words = _ordinal(_field_words(intent.target))
        role = role_word(" ".join(words)) if words else intent.role
        if role and len(words) <= 2:
            picked = _nth([n for n in nodes if n.role == role], position or 1)
            if picked and _directly_targetable(nodes, picked[0]):
                node = picked[0]
    if node is not None:
        batch.actions.append(Action("click", target=_target_for(node)))
        batch.focus = None
        batch.stop = node.role in ("link", "tab", "menuitem", "treeitem")
        return
    if text_present(nodes, intent.target):
        batch.actions.append(Action("click", target=Target("text", intent.target)))
        batch.focus = None
        batch.stop = True
        return
    raise GroundingError(f'nothing called "{intent.target}" to click on the page')


def _ground_choose(nodes: list[AriaNode], intent: Choose, batch: _Batch) -> None:
    choosable = [n for n in nodes if n.role in ("checkbox", "radio", "switch", "option", "menuitemcheckbox",
                                                "menuitemradio", "treeitem", "tab") and n.name]
    for item in intent.items:
        node = next((n for n in choosable if n.name == item), None) or next(
            (n for n in choosable if norm_text(n.name) == norm_text(item)), None)
        if node is None:
            if text_present(nodes, item):
                batch.actions.append(Action("click", target=Target("text", item)))
                continue
            raise GroundingError(f'nothing called "{item}" to select on the page')
        if node.role == "option":
            parent = nodes[node.parent] if node.parent is not None else None
            if parent is not None and parent.role == "combobox":
                if "selected" not in node.attrs:
                    batch.actions.append(Action("select", text=node.name, target=_target_for(parent)))
                continue
        if node.role in ("checkbox", "radio", "switch", "menuitemcheckbox", "menuitemradio") and node.checked:
            continue
        batch.actions.append(Action("click", target=_target_for(node)))
    batch.focus = None


def _ground_focus(nodes: list[AriaNode], intent: Focus, batch: _Batch) -> None:
    fields = [n for n in nodes if n.role in FIELD_ROLES]
    matches = _match_fields(nodes, fields, intent.field) if fields else []
    if not matches:
        raise GroundingError(f'no field matches "{intent.field or "the text field"}"')
    node = matches[0]
    pre, direct = _reach(nodes, node, batch)
    batch.actions.extend(pre)
    if direct:
        batch.actions.append(Action("click", target=_target_for(node)))
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
    target = Target("role", pick.name, role=pick.role) if pick.name else Target("text", pick.text.strip())
    batch.actions.append(Action("click", target=target))
    batch.focus = None
    return None


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
                continue
            if isinstance(intent, Click):
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
