"""UI-TARS (1.0, 1.5) over OpenAI-compatible chat completions, in the conversation of
``openai_compat.CompatPolicy``.

:class:`UITarsPolicy` sends the official computer-use prompt with the instruction; the answer is text
``Thought: ...\\nAction: click(start_box='(x,y)')``, parsed by :func:`parse_ui_tars`. Box syntaxes: ``'(x,y)'``,
``'<|box_start|>(x,y)<|box_end|>'``, ``'<point>x y</point>'`` (and 4-number boxes, whose centre is used).
Coordinates: UI-TARS 1.0 relative 0-1000 (``coordinates: normalized``), 1.5 pixels of the ``smart_resize``d image
(``coordinates: smart-resize``: the screenshot is resized to that size before sending).

UI-TARS mapping (the table is :data:`UI_TARS_ACTIONS`):

=====================================  ======================================================================
UI-TARS                                Lodestar
=====================================  ======================================================================
click / left_single(start_box)         click
left_double / right_single             double_click / right_click
left_triple                            triple_click
hover / mouse_move / move_to           move
drag / select(start_box, end_box)      drag
hotkey(key='ctrl c') / press(key)      key, one chord (space- or plus-separated)
keydown / keyup                        failed step: holding keys is not supported
type(content='...')                    type; a trailing "\\n" becomes an Enter key press
scroll(start_box?, direction)          scroll 500 px in the direction (UI-TARS gives no magnitude; down when
                                       no direction is given)
wait()                                 wait 5 s (the prompt's convention)
finished(content=...)                  done with the content
call_user()                            the task pauses with the thought as the question (ask_user)
anything else                          failed step naming the action
=====================================  ======================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from worker.computer import Action
from worker.policy import Decision, Episode
from worker.providers.actions import (
    SCROLL_DIRECTIONS,
    ActionBuilder,
    ActionMap,
    click_at,
    done,
    drag_between,
    move_to,
    no_action,
    refuse,
    table_entry,
)
from worker.providers.answers import AnswerError, text_of
from worker.providers.openai_compat import CompatPolicy

UI_TARS_SCROLL_PX = 500
"""Pixels of a UI-TARS ``scroll`` (the action has a direction only)."""
UI_TARS_WAIT_SECONDS = 5.0

UI_TARS_PROMPT = "\n".join([
    "You are a GUI agent. You are given a task and your action history, with screenshots. "
    "You need to perform the next action to complete the task.",
    "",
    "## Output Format",
    "```",
    "Thought: ...",
    "Action: ...",
    "```",
    "",
    "## Action Space",
    "click(start_box='<|box_start|>(x1,y1)<|box_end|>')",
    "left_double(start_box='<|box_start|>(x1,y1)<|box_end|>')",
    "right_single(start_box='<|box_start|>(x1,y1)<|box_end|>')",
    "drag(start_box='<|box_start|>(x1,y1)<|box_end|>', end_box='<|box_start|>(x3,y3)<|box_end|>')",
    "hotkey(key='')",
    "type(content='') #If you want to submit your input, use \"\\n\" at the end of `content`.",
    "scroll(start_box='<|box_start|>(x1,y1)<|box_end|>', direction='down or up or right or left')",
    "wait() #Sleep for 5s and take a screenshot to check for any changes.",
    "finished(content='xxx') # Use escape characters \\', \\\", and \\n in content part to ensure we can "
    "parse the content in normal python string format.",
    "call_user() # Submit the task and call the user when the task is unsolvable, or when you need the user's help.",
    "",
    "## Note",
    "- Use English in `Thought` part.",
    "- Write a small plan and finally summarize your next action (with its target element) in one sentence in "
    "`Thought` part.",
    "",
    "## User Instruction",
    "",
])
"""The UI-TARS computer-use prompt (bytedance/UI-TARS ``prompt.py``, COMPUTER_USE); the instruction follows it."""


@dataclass
class UITarsCall:
    """One parsed UI-TARS action: ``name``, its raw string arguments, and the points of ``start_box``/``point``
    and ``end_box``/``end_point`` in the model's coordinates (a box's centre)."""

    name: str
    args: dict[str, str] = field(default_factory=dict)
    start: tuple[float, float] | None = None
    end: tuple[float, float] | None = None


@dataclass
class UITarsAnswer:
    thought: str
    calls: list[UITarsCall]


_CALL_START = re.compile(r"([A-Za-z_]\w*)\s*\(")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ESCAPES = {"n": "\n", "t": "\t", "'": "'", '"': '"', "\\": "\\"}


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), s)


def _split_calls(text: str) -> list[tuple[str, str]]:
    """``name(args)`` calls in ``text`` as ``(name, args text)``, honouring quotes and nested parentheses."""
    calls: list[tuple[str, str]] = []
    i = 0
    while True:
        m = _CALL_START.search(text, i)
        if m is None:
            return calls
        j, depth, quote = m.end(), 1, ""
        while j < len(text) and depth:
            c = text[j]
            if quote:
                if c == "\\":
                    j += 1
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            j += 1
        if depth:
            if m.group(1) in ("type", "finished"):  # an unescaped quote in free text: take the rest as is
                calls.append((m.group(1), text[m.end():].rstrip().removesuffix(")")))
                return calls
            raise AnswerError(f"unbalanced parentheses in {text[m.start():][:120]!r}")
        calls.append((m.group(1), text[m.end():j - 1]))
        i = j


def _split_args(args: str) -> dict[str, str]:
    """``key='value', key2=(1,2)`` -> {key: value}; quoted values are unescaped."""
    out: dict[str, str] = {}
    content = re.fullmatch(r"\s*content\s*=\s*(['\"])(.*)\1\s*", args, re.S)
    if content:  # free text: everything up to the last quote, whatever quotes it holds
        return {"content": _unescape(content.group(2))}
    i = 0
    while i < len(args):
        m = re.compile(r"\s*,?\s*([A-Za-z_]\w*)\s*=\s*").match(args, i)
        if m is None:
            if args[i:].strip(" ,\n"):
                raise AnswerError(f"cannot read the arguments {args!r}")
            break
        key, j = m.group(1), m.end()
        if j < len(args) and args[j] in "'\"":
            quote, k = args[j], j + 1
            while k < len(args) and args[k] != quote:
                k += 2 if args[k] == "\\" else 1
            out[key] = _unescape(args[j + 1:k])
            i = k + 1
        else:
            depth, k = 0, j
            while k < len(args) and not (args[k] == "," and depth == 0):
                depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(args[k], 0)
                k += 1
            out[key] = args[j:k].strip()
            i = k
    return out


def box_point(value: str) -> tuple[float, float]:
    """The point of a UI-TARS box in any of its syntaxes: ``(x,y)``, ``<|box_start|>(x,y)<|box_end|>``,
    ``<point>x y</point>``, ``[x1, y1, x2, y2]`` (a box: its centre). Raises AnswerError otherwise."""
    numbers = [float(n) for n in _NUMBER.findall(value.replace("<|box_start|>", "").replace("<|box_end|>", ""))]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    if len(numbers) == 4:
        return (numbers[0] + numbers[2]) / 2, (numbers[1] + numbers[3]) / 2
    raise AnswerError(f"cannot read a point from {value!r}")


def parse_ui_tars(text: str) -> UITarsAnswer:
    """Parse a UI-TARS answer (``Thought: ...`` then ``Action: ...`` with one or more calls).

    Returns the thought and the calls with their points in the model's coordinate space (not yet mapped).
    Raises AnswerError: no ``Action:`` part, no call in it, or a call that cannot be read.
    """
    index = text.rfind("Action:")
    if index < 0:
        raise AnswerError("no 'Action:' in the answer")
    head, body = text[:index], text[index + len("Action:"):]
    thought = re.sub(r"^\s*(Thought|Reflection|Action_Summary):\s*", "", head.strip(), flags=re.M).strip()
    calls = []
    for name, raw_args in _split_calls(body):
        args = _split_args(raw_args)
        start = args.get("start_box") or args.get("start_point") or args.get("point")
        end = args.get("end_box") or args.get("end_point")
        calls.append(UITarsCall(name, args, box_point(start) if start else None, box_point(end) if end else None))
    if not calls:
        raise AnswerError(f"no action call after 'Action:' in {body.strip()[:120]!r}")
    return UITarsAnswer(thought, calls)


def _start(call: UITarsCall) -> list[float]:
    """The call's ``start_box`` point. Raises AnswerError when it has none."""
    if call.start is None:
        raise AnswerError(f"{call.name} needs start_box")
    return list(call.start)


def _end(call: UITarsCall) -> list[float]:
    """The call's ``end_box`` point. Raises AnswerError when it has none."""
    if call.end is None:
        raise AnswerError(f"{call.name} needs end_box")
    return list(call.end)


def _hotkey(b: ActionBuilder, call: UITarsCall) -> list[Action]:
    """``hotkey(key='ctrl c')`` / ``press(key)``: one chord, its keys separated by spaces or "+"."""
    key = call.args.get("key") or call.args.get("hotkey") or ""
    return b.key(key.replace("+", " ").split())


def _type_content(b: ActionBuilder, call: UITarsCall) -> list[Action]:
    """``type(content='...')``: a trailing newline (the prompt's way to submit) becomes an Enter key press."""
    content = call.args.get("content", "")
    enter = content.endswith("\n")
    text = content.rstrip("\n") if enter else content
    return [*(b.type(text) if text else []), *(b.key("Enter") if enter else [])]


def _ui_tars_scroll(b: ActionBuilder, call: UITarsCall) -> list[Action]:
    """``scroll(start_box?, direction)``: ``UI_TARS_SCROLL_PX`` in the direction (down when none is given), at
    the point, else at the pointer."""
    direction = (call.args.get("direction") or "down").strip().lower()
    sign = SCROLL_DIRECTIONS.get(direction)
    if sign is None:
        raise AnswerError(f"scroll direction {direction!r}")
    start = list(call.start) if call.start else None
    return b.scroll(start, sign[0] * UI_TARS_SCROLL_PX, sign[1] * UI_TARS_SCROLL_PX)


UI_TARS_ACTIONS: dict[str, ActionMap[UITarsCall]] = {
    "click": click_at(_start),
    "left_single": click_at(_start),
    "left_double": click_at(_start, count=2),
    "left_triple": click_at(_start, count=3),
    "right_single": click_at(_start, button="right"),
    "hover": move_to(_start),
    "mouse_move": move_to(_start),
    "move_to": move_to(_start),
    "drag": drag_between(_start, _end),
    "select": drag_between(_start, _end),
    "hotkey": _hotkey,
    "press": _hotkey,
    **refuse(("keydown", "keyup"), "holding keys is not supported; use hotkey"),
    "type": _type_content,
    "scroll": _ui_tars_scroll,
    "wait": lambda b, call: b.wait(UI_TARS_WAIT_SECONDS),
    "finished": lambda b, call: [done(call.args.get("content"))],
    "call_user": no_action,  # map_ui_tars turns it into Decision.ask_user
}
"""UI-TARS action name -> entry (the UI-TARS table in the module docstring)."""


def map_ui_tars(answer: UITarsAnswer, b: ActionBuilder) -> Decision:
    """UI-TARS calls -> a Decision in viewport pixels (``b`` converts the coordinates). An unmappable call ends
    the list with ``Decision.error``; ``call_user`` sets ``ask_user``; ``finished`` ends with done."""
    actions: list[Action] = []
    thought = answer.thought or None
    for call in answer.calls:
        try:
            actions += table_entry(UI_TARS_ACTIONS, call.name, "UI-TARS action")(b, call)
        except AnswerError as exc:
            return Decision(actions, thought=thought, error=f"openai-compat (ui-tars): {exc}")
        if call.name == "call_user":
            return Decision(actions, thought=thought, ask_user=thought or "The agent asks for your help.")
        if actions and actions[-1].type == "done":
            break
    return Decision(actions, thought=thought)


class UITarsPolicy(CompatPolicy):
    """UI-TARS 1.0 / 1.5 over chat completions: the official prompt, answers parsed by :func:`parse_ui_tars`."""

    def _first_text(self, episode: Episode) -> str:
        return UI_TARS_PROMPT + self._instruction(episode)

    def _decide(self, message: dict[str, Any]) -> Decision:
        return map_ui_tars(parse_ui_tars(text_of(message.get("content"))), self.builder)
