"""What only MiniWoB++ pages need, read off the page as a user would: the START cover, the shown reward, the query.

A MiniWoB++ page (``html/miniwob/*.html`` of the ``miniwob`` package; ``bench/miniwob_dev.py`` serves them) hides
the task under a "START" cover until it is clicked, shows "Last reward: X" in a corner (its HUD, "-" until an
episode has ended) and writes the instruction at the top (``#query``), followed by filler text. The heuristic policy
clicks the cover first, finishes when the cover comes back, and reads the instruction from the page when told to
"Follow the instruction on the page".
"""

from __future__ import annotations

import re
from dataclasses import replace

from worker.heuristic.aria import TEXT_ROLES, AriaNode
from worker.heuristic.instructions import first_sentences, parse_instruction

_START = re.compile(r"(?:^|\s)START(?:\s|$)")
_LAST_REWARD = re.compile(r"Last reward:\s*(-?\d+(?:\.\d+)?)")
_HUD = re.compile(r"\s*Last reward:.*$", re.S)


def start_cover_visible(nodes: list[AriaNode]) -> bool:
    """True when a "START" cover (MiniWoB++'s sync screen) is on the page: a text run or button reading START."""
    return any(_START.search(n.text) or _START.search(n.name) for n in nodes
               if n.role in TEXT_ROLES or n.role in ("button", "text"))


def shown_reward(nodes: list[AriaNode]) -> str | None:
    """The "Last reward: X" a MiniWoB++ page shows in its corner, or None (also None while it shows "-")."""
    for n in nodes:
        m = _LAST_REWARD.search(n.text) or _LAST_REWARD.search(n.name)
        if m:
            return m.group(1)
    return None


def page_instruction(nodes: list[AriaNode]) -> str | None:
    """The instruction written on the page: the first text run near the top that reads as one.

    MiniWoB++'s query (``#query``) shares a text run with the filler words after it and the corner HUD; both are
    cut off (the HUD at "Last reward:", the filler as sentences with no verb).
    """
    found = _instruction_at(nodes)
    return found[1] if found else None


def _instruction_at(nodes: list[AriaNode]) -> tuple[int, str] | None:
    for node in nodes:
        if node.role == "textbox":
            continue
        raw = node.text or (node.name if node.role in ("heading", "paragraph") else "")
        if not raw:
            continue
        raw = _HUD.sub("", raw).strip()
        if not raw or raw == "START":
            continue
        if parse_instruction(raw):
            return node.index, first_sentences(raw)
    return None


def without_instruction(nodes: list[AriaNode]) -> list[AriaNode]:
    """The outline with the words of the page's instruction and its corner HUD taken out of their text run (what
    follows the instruction in the same run stays): so "click on the item labeled "Prev"" does not find "Prev" in
    the instruction itself. Node indices are unchanged."""
    out = []
    found = _instruction_at(nodes)
    for node in nodes:
        text = _HUD.sub("", node.text) if "Last reward:" in node.text else node.text
        if found and node.index == found[0]:
            text = _after_instruction(text, found[1])
        out.append(replace(node, text=text) if text != node.text else node)
    return out


def _after_instruction(text: str, instruction: str) -> str:
    """``text`` without its leading ``instruction`` (as :func:`first_sentences` rebuilt it), compared loosely."""
    squeezed = re.sub(r"\s+", " ", text).strip()
    if squeezed.startswith(instruction):
        return squeezed[len(instruction):].strip()
    last = instruction.rsplit(" ", 1)[-1]
    at = squeezed.find(last)
    return squeezed[at + len(last):].strip() if at >= 0 else ""
