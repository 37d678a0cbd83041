"""The page as the heuristic agent reads it: Playwright's ARIA snapshot parsed into an outline, and queries on it.

The snapshot is the YAML text of ``locator.aria_snapshot()`` (``worker/browser.py`` takes it of the page's ``body``;
a policy receives it as ``Observation.accessibility``), one element a line, children indented by two spaces::

    - text: Enter "Bob" into the text field
    - paragraph:
      - textbox "Name"
    - button "Submit"

:func:`parse_aria` turns it into :class:`AriaNode` s in document order; :func:`find_clickable`, :func:`text_present`
and :func:`field_label` read that list the way a user reads the screen. Which roles are clickable is the table in
``worker/computer.py`` (shared with the browser); the role sets defined here describe the outline only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from worker.computer import CLICKABLE_ROLES, Target

FOCUSABLE_ROLES = frozenset({
    "textbox", "searchbox", "spinbutton", "combobox", "button", "link", "checkbox", "radio", "slider", "switch",
})
"""Roles reached by the Tab key (approximately: the outline does not say which elements are focusable)."""
TEXT_ROLES = frozenset({"text", "paragraph", "heading", "generic", "label", "cell", "listitem", "strong", "emphasis",
                        "status", "caption", "term", "definition", "note", "blockquote"})
"""Roles of nodes whose words a user reads: text runs, paragraphs, headings, cells ..."""

_LINE = re.compile(r"^(?P<indent>\s*)- (?P<body>.*)$")
_KEY = re.compile(
    r'^(?P<role>[A-Za-z][\w-]*)(?:\s+(?:"(?P<name>(?:[^"\\]|\\.)*)"|(?P<rx>/(?:[^/\\]|\\.)*/)))?'
    r"(?P<attrs>(?:\s*\[[^\]]*\])*)\s*$"
)
_ATTR = re.compile(r"\[([^\]=]+)(?:=([^\]]*))?\]")


@dataclass
class AriaNode:
    """One entry of the outline, in document order.

    ``role``: ARIA role ("button", "textbox", "text" for a bare text run ...); ``name``: accessible name ("" when
    none); ``text``: inline text after the colon (a text run, a paragraph's words, a textbox's current value);
    ``attrs``: bracketed states such as ``{"checked": "", "level": "1"}``; ``props``: ``/url`` and ``/placeholder``;
    ``parent``: index of the enclosing node or None at the top level.
    """

    index: int
    depth: int
    role: str
    name: str = ""
    text: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    props: dict[str, str] = field(default_factory=dict)
    parent: int | None = None

    @property
    def checked(self) -> bool:
        """True for ``[checked]`` and ``[checked=true]`` (not for ``[checked=mixed]`` or an unchecked box)."""
        return "checked" in self.attrs and self.attrs["checked"] in ("", "true")

    def label(self) -> str:
        """What names this node on screen: its accessible name, else its placeholder, else its inline text."""
        return self.name or self.props.get("placeholder", "") or self.text


def _yaml_scalar(raw: str) -> str:
    """Decode one YAML scalar as Playwright writes it: plain, 'single-quoted' or "double-quoted" with escapes."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        body = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: "\\u00" + m.group(1), raw[1:-1])
        try:
            return str(json.loads(f'"{body}"'))
        except ValueError:
            return body.replace('\\"', '"').replace("\\\\", "\\")
    return raw


def _split_key(body: str) -> tuple[str, str | None]:
    """Split ``KEY[: VALUE]`` where KEY may be a single-quoted YAML scalar. Returns (key, value or None)."""
    if body.startswith("'"):
        i = 1
        while i < len(body):
            if body[i] == "'":
                if i + 1 < len(body) and body[i + 1] == "'":
                    i += 2
                    continue
                break
            i += 1
        key = body[1:i].replace("''", "'")
        rest = body[i + 1:]
        if rest.startswith(":"):
            return key, rest[1:].strip()
        return key, None
    # an unquoted key cannot contain ": " (Playwright quotes it then), but a quoted name inside it can
    in_quotes = False
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and in_quotes:
            i += 2
            continue
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == ":" and not in_quotes and (i + 1 == len(body) or body[i + 1] == " "):
            return body[:i], body[i + 1:].strip()
        i += 1
    return body, None


def parse_aria(snapshot: str | None) -> list[AriaNode]:
    """Parse Playwright's ARIA snapshot (``locator.aria_snapshot()``, a YAML outline) into nodes in document order.

    Understands ``- role "name" [attr] [attr=v]``, ``- role "name": inline text``, ``- role:`` followed by
    indented children, ``- text: words``, ``- /url: ...`` properties and YAML quoting of keys and values.
    Lines it cannot read are skipped: the outline is advisory, never trusted to be complete.
    """
    nodes: list[AriaNode] = []
    stack: list[AriaNode] = []  # open ancestors
    for raw_line in (snapshot or "").splitlines():
        m = _LINE.match(raw_line)
        if not m:
            continue
        depth = len(m.group("indent")) // 2
        key, value = _split_key(m.group("body").rstrip())
        while stack and stack[-1].depth >= depth:
            stack.pop()
        parent = stack[-1] if stack else None
        if key.startswith("/"):
            if parent is not None and value is not None:
                parent.props[key[1:]] = _yaml_scalar(value)
            continue
        if value is None and key.startswith('"'):
            node = AriaNode(len(nodes), depth, "text", text=_yaml_scalar(key))
        else:
            km = _KEY.match(key)
            if not km:
                continue
            name = ""
            if km.group("name") is not None:
                try:
                    name = str(json.loads(f'"{km.group("name")}"'))
                except ValueError:
                    name = km.group("name")
            elif km.group("rx"):
                name = km.group("rx")[1:-1]
            attrs = {a.strip(): (v or "").strip() for a, v in _ATTR.findall(km.group("attrs") or "")}
            node = AriaNode(len(nodes), depth, km.group("role"), name=name,
                            text=_yaml_scalar(value) if value else "", attrs=attrs)
        node.parent = parent.index if parent is not None else None
        nodes.append(node)
        stack.append(node)
    return nodes


def norm_text(s: str) -> str:
    """``s`` with each run of whitespace made one space, stripped and lower-cased: names compared loosely."""
    return re.sub(r"\s+", " ", s).strip().lower()


def find_clickable(nodes: list[AriaNode], name: str, role: str | None) -> AriaNode | None:
    """The node called ``name`` among the named nodes of ``CLICKABLE_ROLES``, or None.

    An exact name wins over one equal after :func:`norm_text`; among equals, the first of ``role`` (when given),
    else the first in document order.
    """
    candidates = [n for n in nodes if n.role in CLICKABLE_ROLES and n.name]
    for exact in (True, False):
        matches = [n for n in candidates if (n.name == name if exact else norm_text(n.name) == norm_text(name))]
        if role:
            preferred = [n for n in matches if n.role == role]
            if preferred:
                return preferred[0]
        if matches:
            return matches[0]
    return None


def text_present(nodes: list[AriaNode], text: str) -> bool:
    """True when ``text`` (compared by :func:`norm_text`, never empty) is part of any node's name or inline text."""
    needle = norm_text(text)
    return bool(needle) and any(needle in norm_text(t) for n in nodes for t in (n.name, n.text) if t)


def field_label(nodes: list[AriaNode], node: AriaNode) -> str:
    """A field's name, placeholder, or the short text just before it in the same container (an unlinked <label>).

    "" when none: the text before it is long (over 60 characters), or another focusable node or the container's
    start comes first.
    """
    own = node.name or node.props.get("placeholder", "")
    if own:
        return own
    for prev in reversed(nodes[: node.index]):
        if prev.parent != node.parent:
            if prev.index == node.parent:
                break
            continue
        if prev.role in FOCUSABLE_ROLES:
            break
        words = prev.text or prev.name
        if words and len(words) <= 60:
            return words
        if words:
            break
    return ""


def target_for(nodes: list[AriaNode], node: AriaNode) -> Target:
    """``Target("role", ...)`` naming ``node``: its role and exact name, and which of the outline's nodes with both
    it is (``nth``), which is which visible match of Playwright's ``get_by_role`` it is."""
    nth = sum(1 for n in nodes[: node.index] if n.role == node.role and n.name == node.name)
    return Target("role", node.name, role=node.role, nth=nth)
