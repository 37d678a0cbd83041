"""Values the heuristic agent reads off the outline: a word of a paragraph, the text in a field, a table's cell.

A user asked to "find the 5th word in the paragraph", "copy the text in the textarea" or "enter the value of Color"
reads it off the screen; these functions do the same on the ARIA outline (``aria.py``), never through the DOM or
JavaScript. Descriptors are worded as in the instruction ("the 3rd text area below", "paragraph").
"""

from __future__ import annotations

import re

from worker.computer import TEXT_FIELD_ROLES
from worker.heuristic.aria import AriaNode, norm_text

_FIELD_WORDS = ("text area", "textarea", "text box", "textbox", "text field", "field", "input", "box")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b|\b(first|second|third|fourth|fifth|last)\b", re.I)
_ORDINAL_WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "last": -1}


class ReadError(Exception):
    """Nothing on the page matches what was to be read (the message says what was looked for)."""


def _position(descriptor: str) -> int | None:
    m = _ORDINAL.search(descriptor)
    if not m:
        return None
    return int(m.group(1)) if m.group(1) else _ORDINAL_WORDS[m.group(2).lower()]


def _pick(items: list[AriaNode], position: int | None) -> AriaNode | None:
    if not items:
        return None
    if position is None:
        return items[0]
    if position == -1:
        return items[-1]
    return items[position - 1] if 0 < position <= len(items) else None


def filled_fields(nodes: list[AriaNode]) -> list[AriaNode]:
    """The text fields that show a value (a textarea with text in it), in document order."""
    return [n for n in nodes if n.role in TEXT_FIELD_ROLES and n.text.strip()]


def source_node(nodes: list[AriaNode], descriptor: str | None) -> AriaNode:
    """The node a descriptor names as a source of text: "the 3rd text area" (the 3rd field with text in it),
    "the paragraph" (the first paragraph with text), else the first field with text or paragraph.

    Raises:
        ReadError: nothing of that kind shows text.
    """
    words = (descriptor or "").lower()
    position = _position(words)
    fields = filled_fields(nodes)
    paragraphs = [n for n in nodes if n.role == "paragraph" and (n.text or n.name).strip()]
    if any(w in words for w in _FIELD_WORDS):
        order = [fields, paragraphs]
    elif "paragraph" in words:
        order = [paragraphs, fields]
    else:
        order = [fields, paragraphs]
    for items in order:
        node = _pick(items, position)
        if node is not None:
            return node
    raise ReadError(f'no text to read in "{descriptor or "the page"}"')


def words_of(text: str) -> list[str]:
    """The words of ``text`` as a reader counts them: runs of letters and digits (punctuation dropped)."""
    return [w for w in (re.sub(r"[^\w]", "", t) for t in text.split()) if w]


def nth_word(nodes: list[AriaNode], descriptor: str | None, position: int) -> str:
    """The ``position``-th word (1-based; -1: the last) of the text in the described node.

    Raises:
        ReadError: no such node, or it has fewer words.
    """
    node = source_node(nodes, descriptor)
    words = words_of(node.text or node.name)
    if position == -1 and words:
        return words[-1]
    if not 0 < position <= len(words):
        raise ReadError(f"the text has {len(words)} words, not a word #{position}")
    return words[position - 1]


def table_value(nodes: list[AriaNode], key: str) -> str | None:
    """The value a table gives for ``key``: the cell after the cell (or row header) reading ``key`` in its row.
    None when no cell reads ``key`` (compared by :func:`norm_text`, a trailing colon ignored)."""
    wanted = norm_text(key).rstrip(":").strip()
    for i, node in enumerate(nodes):
        if node.role in ("cell", "rowheader", "columnheader", "gridcell") and \
                norm_text(node.name or node.text).rstrip(":").strip() == wanted:
            for later in nodes[i + 1:]:
                if later.parent != node.parent:
                    break
                if later.role in ("cell", "gridcell"):
                    return (later.name or later.text).strip()
    return None
