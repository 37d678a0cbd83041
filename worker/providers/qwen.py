"""Qwen-VL (Qwen2.5-VL, Qwen3-VL) over OpenAI-compatible chat completions, in the conversation of
``openai_compat.CompatPolicy``.

:class:`QwenPolicy` sends the ``computer_use`` function (:func:`qwen_tool`) in ``tools``; calls come back as
``message.tool_calls`` or ``<tool_call>{"name": "computer_use", "arguments": {...}}</tool_call>`` in the text,
parsed by :func:`parse_qwen`. Qwen2.5-VL answers in pixels of the smart-resized image, Qwen3-VL in 0-1000.

Qwen-VL mapping (the table is :data:`QWEN_ACTIONS`; its pointer and typing entries are
``actions.COORDINATE_ACTIONS``, shared with Anthropic's computer tool, which Qwen's ``computer_use`` repeats):

=====================================  ======================================================================
Qwen computer_use action               Lodestar
=====================================  ======================================================================
left_click / right_click{coordinate}   click / right_click (at the pointer when no coordinate)
double_click / triple_click            double_click / triple_click
middle_click                           failed step: middle clicks are not supported
mouse_move{coordinate}                 move
left_click_drag{coordinate}            drag from the pointer (or start_coordinate) to the coordinate
key{keys: [...]}                       key, one chord
type{text}                             type
scroll{pixels} / hscroll{pixels}       scroll; positive pixels scroll up / right; values of at most 25 are
                                       wheel notches (x 100 px, as Qwen's pyautogui harness scrolls)
wait{time}                             wait (seconds; 1 s when absent)
terminate{status}                      done, or fail when status is failure
answer{text}                           done with the text
anything else                          failed step naming the action
=====================================  ======================================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from worker.computer import Action
from worker.policy import Decision
from worker.providers.actions import (
    COORDINATE_ACTIONS,
    SCROLL_NOTCH_PX,
    ActionBuilder,
    ActionMap,
    done,
    fail,
    table_entry,
    wait_seconds,
)
from worker.providers.answers import AnswerError, number_of, text_of
from worker.providers.openai_compat import CompatPolicy
from worker.providers.screen import Frame

QWEN_NOTCH_LIMIT = 25

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


@dataclass
class QwenAnswer:
    """The text around the calls (the model's thought) and each call's ``arguments`` (``{"action": ...}``)."""

    thought: str
    calls: list[dict[str, Any]]


def _json_object(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise AnswerError(f"{where} is not valid JSON: {raw[:160]!r}") from None
    if not isinstance(raw, dict):
        raise AnswerError(f"{where} must be a JSON object")
    return raw


def parse_qwen(message: dict[str, Any]) -> QwenAnswer:
    """Parse a Qwen-VL chat message: ``message.tool_calls`` (vLLM's tool parser) and/or ``<tool_call>{json}
    </tool_call>`` blocks in ``content`` (the raw template). Raises AnswerError: invalid JSON, a call that is not
    ``computer_use`` or has no ``action``, or no call at all."""
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(
        text_of(p.get("text")) for p in content or [] if isinstance(p, dict))
    raw_calls: list[dict[str, Any]] = []
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict):
            raise AnswerError("a tool call without a function")
        raw_calls.append({"name": fn.get("name"), "arguments": _json_object(fn.get("arguments"), "tool arguments")})
    for m in _TOOL_CALL.finditer(text):
        raw_calls.append(_json_object(m.group(1).strip(), "a <tool_call> block"))
    calls = []
    for call in raw_calls:
        if call.get("name") != "computer_use":
            raise AnswerError(f"unknown tool {call.get('name')!r} (only computer_use)")
        arguments = _json_object(call.get("arguments"), "computer_use arguments")
        if not isinstance(arguments.get("action"), str):
            raise AnswerError("computer_use arguments need an action")
        calls.append(arguments)
    if not calls:
        raise AnswerError("no computer_use tool call in the answer")
    return QwenAnswer(_TOOL_CALL.sub("", text).strip(), calls)


def _qwen_pixels(value: Any) -> float:
    """A Qwen scroll amount in pixels: values of at most ``QWEN_NOTCH_LIMIT`` are wheel notches (x
    ``SCROLL_NOTCH_PX``, as Qwen's pyautogui harness scrolls)."""
    pixels = number_of(value, "pixels")
    return pixels * SCROLL_NOTCH_PX if abs(pixels) <= QWEN_NOTCH_LIMIT else pixels


def _qwen_key(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``key{keys: [...]}``: one chord (a "ctrl+c" string is read too)."""
    keys = a.get("keys")
    return b.key(keys if isinstance(keys, list) else text_of(keys).split("+"))


def _qwen_terminate(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``terminate{status}``: fail when the status is failure, else done (without a result)."""
    status = text_of(a.get("status")).lower()
    return [fail("the model ended the task as failed") if status == "failure" else done(None)]


QWEN_ACTIONS: dict[str, ActionMap[dict[str, Any]]] = {
    **COORDINATE_ACTIONS,  # left/right/middle/double/triple_click, mouse_move, left_click_drag, type
    "key": _qwen_key,
    "scroll": lambda b, a: b.scroll(a.get("coordinate"), 0, -_qwen_pixels(a.get("pixels"))),  # positive: up
    "hscroll": lambda b, a: b.scroll(a.get("coordinate"), _qwen_pixels(a.get("pixels")), 0),
    "wait": wait_seconds("time", default=1),
    "terminate": _qwen_terminate,
    "answer": lambda b, a: [done(a.get("text"))],
}
"""Qwen ``computer_use`` action -> entry (the Qwen-VL table in the module docstring)."""


def map_qwen(answer: QwenAnswer, b: ActionBuilder) -> Decision:
    """Qwen ``computer_use`` calls -> a Decision in viewport pixels; an unmappable call ends the list with
    ``Decision.error``."""
    actions: list[Action] = []
    thought = answer.thought or None
    for call in answer.calls:
        try:
            actions += table_entry(QWEN_ACTIONS, call["action"], "computer_use action")(b, call)
        except AnswerError as exc:
            return Decision(actions, thought=thought, error=f"openai-compat (qwen): {exc}")
        if actions and actions[-1].type in ("done", "fail"):
            break
    return Decision(actions, thought=thought)


def qwen_tool(width: int, height: int) -> dict[str, Any]:
    """The ``computer_use`` function of Qwen-VL's computer-use cookbook; ``width`` x ``height`` is the resolution
    the model is told (the sent image's, or 1000x1000 for relative coordinates)."""
    description = (
        "Use a mouse and keyboard to interact with a computer, and take screenshots.\n"
        "* This is an interface to a desktop GUI. You do not have access to a terminal or applications menu.\n"
        "* Some applications may take time to start or process actions, so you may need to wait and take "
        "successive screenshots to see the results of your actions.\n"
        f"* The screen's resolution is {width}x{height}.\n"
        "* Whenever you intend to move the cursor to click on an element, consult a screenshot to determine the "
        "coordinates of the element before moving the cursor.\n"
        "* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element."
    )
    actions = ["key", "type", "mouse_move", "left_click", "left_click_drag", "right_click", "middle_click",
               "double_click", "triple_click", "scroll", "hscroll", "wait", "terminate", "answer"]
    return {"type": "function", "function": {"name": "computer_use", "description": description, "parameters": {
        "type": "object", "required": ["action"], "properties": {
            "action": {"type": "string", "enum": actions, "description": "The action to perform."},
            "keys": {"type": "array", "description": "Required only by action=key."},
            "text": {"type": "string", "description": "Required only by action=type and action=answer."},
            "coordinate": {"type": "array", "description": "(x, y): the pixel to move the mouse to."},
            "pixels": {"type": "number", "description": "Scroll amount; positive scrolls up (or right for "
                                                        "hscroll). Required only by action=scroll and hscroll."},
            "time": {"type": "number", "description": "Seconds to wait. Required only by action=wait."},
            "status": {"type": "string", "enum": ["success", "failure"],
                       "description": "The status of the task. Required only by action=terminate."},
        }}}}


class QwenPolicy(CompatPolicy):
    """Qwen2.5-VL / Qwen3-VL with the ``computer_use`` function, answers parsed by :func:`parse_qwen`."""

    def _extra(self, body: dict[str, Any], frame: Frame) -> None:
        size = (1000, 1000) if self.spec.coordinates == "normalized" else (frame.width, frame.height)
        body["tools"] = [qwen_tool(*size)]

    def _decide(self, message: dict[str, Any]) -> Decision:
        return map_qwen(parse_qwen(message), self.builder)
