"""Open-weight GUI models over OpenAI-compatible chat completions (vLLM, Ollama, TGI), with the ``openai`` SDK.

Wire format: PROVIDERS.md section 4. ``POST {base}/chat/completions`` where the entry's ``base_url`` ends in
``/v1``; the key is the entry's (or ``OPENAI_API_KEY``, else "EMPTY", which vLLM accepts). The history is kept
client-side: ``[system (system_prompt)?, context turns..., user (prompt + screenshot), assistant (answer), user
(the last step's errors, injected messages, screenshot), ...]``; screenshots beyond the last
``model_screenshots_kept`` are replaced by a text placeholder. Screenshots are ``image_url`` data URLs.

Two dialects (``ModelSpec.dialect``):

- **UI-TARS** (:class:`UITarsPolicy`): the official computer-use prompt with the instruction; the answer is text
  ``Thought: ...\\nAction: click(start_box='(x,y)')``, parsed by :func:`parse_ui_tars`. Box syntaxes:
  ``'(x,y)'``, ``'<|box_start|>(x,y)<|box_end|>'``, ``'<point>x y</point>'`` (and 4-number boxes, whose centre
  is used). Coordinates: UI-TARS 1.0 relative 0-1000 (``coordinates: normalized``), 1.5 pixels of the
  ``smart_resize``d image (``coordinates: smart-resize``: the screenshot is resized to that size before sending).
- **Qwen-VL** (:class:`QwenPolicy`): the ``computer_use`` function is sent in ``tools``; calls come back as
  ``message.tool_calls`` or ``<tool_call>{"name": "computer_use", "arguments": {...}}</tool_call>`` in the text,
  parsed by :func:`parse_qwen`. Qwen2.5-VL answers in pixels of the smart-resized image, Qwen3-VL in 0-1000.

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
import os
import re
from dataclasses import dataclass, field
from typing import Any

import openai

from worker.computer import Action
from worker.policy import Decision, Episode
from worker.providers.actions import (
    COORDINATE_ACTIONS,
    SCROLL_DIRECTIONS,
    SCROLL_NOTCH_PX,
    ActionBuilder,
    ActionMap,
    click_at,
    done,
    drag_between,
    fail,
    move_to,
    no_action,
    refuse,
    table_entry,
    wait_seconds,
)
from worker.providers.answers import AnswerError, int_of, number_of, parse_json_body, text_of
from worker.providers.base import ModelPolicy, last_step_problems
from worker.providers.screen import Frame

PLACEHOLDER = "(an older screenshot, omitted)"
UI_TARS_SCROLL_PX = 500
"""Pixels of a UI-TARS ``scroll`` (the action has a direction only)."""
UI_TARS_WAIT_SECONDS = 5.0
QWEN_NOTCH_LIMIT = 25

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


# --- UI-TARS ---------------------------------------------------------------------------------------------------
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


# --- Qwen-VL -----------------------------------------------------------------------------------------------------
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


# --- the policies ------------------------------------------------------------------------------------------------
def prune_images(messages: list[dict[str, Any]], keep: int) -> None:
    """Replace all but the last ``keep`` ``image_url`` parts by a text placeholder, in place."""
    seen = 0
    for message in reversed(messages):
        if not isinstance(message.get("content"), list):
            continue
        for part in reversed(message["content"]):
            if part.get("type") == "image_url":
                seen += 1
                if seen > keep:
                    part.clear()
                    part.update({"type": "text", "text": PLACEHOLDER})


class CompatPolicy(ModelPolicy):
    """The chat-completions conversation shared by :class:`UITarsPolicy` and :class:`QwenPolicy`.

    Raises ``PolicyError`` from ``decide`` when the call fails after the SDK's retries (``openai.APIError``)."""

    provider = "openai-compat"
    sdk_error = openai.OpenAIError

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.messages: list[dict[str, Any]] = []
        self._sent: list[dict[str, Any]] = []

    def _make_client(self) -> Any:
        options = self._client_options()
        options["api_key"] = options["api_key"] or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        return openai.OpenAI(**options)

    def _first_text(self, episode: Episode) -> str:
        return episode.instruction

    def _extra(self, body: dict[str, Any], frame: Frame) -> None:
        """Dialect-specific request fields (Qwen: ``tools``)."""

    def _request(self, frame: Frame, episode: Episode) -> dict[str, Any]:
        texts = [{"type": "text", "text": t} for t in (*last_step_problems(episode), *episode.new_messages)]
        image = {"type": "image_url", "image_url": {"url": frame.data_url()}}
        if not self.messages:
            head: list[dict[str, Any]] = []
            if episode.system_prompt:
                head.append({"role": "system", "content": episode.system_prompt})
            head += [{"role": t["role"], "content": t["content"]} for t in episode.context]
            turn = {"role": "user", "content": [{"type": "text", "text": self._first_text(episode)}, *texts, image]}
        else:
            head, turn = self.messages, {"role": "user", "content": [*texts, image]}
        messages = [*head, turn]
        prune_images(messages, self.keep_screenshots)
        self._sent = messages
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages, "max_tokens": self.spec.max_tokens}
        if self.spec.send_temperature:
            body["temperature"] = episode.temperature
        self._extra(body, frame)
        return body

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        raw = self.client.chat.completions.with_raw_response.create(**request)
        return parse_json_body(raw.http_response.text)

    def _tokens(self, answer: dict[str, Any]) -> tuple[int, int]:
        usage = answer.get("usage") or {}
        return int_of(usage.get("prompt_tokens")), int_of(usage.get("completion_tokens"))

    def _parse(self, answer: dict[str, Any], episode: Episode) -> Decision:
        choices = answer.get("choices")
        message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(
            choices[0], dict) else None
        if not isinstance(message, dict):
            raise AnswerError("no choices[0].message in the answer")
        self.messages = [*self._sent, {"role": "assistant", "content": self._render(message)}]
        return self._decide(message)

    def _render(self, message: dict[str, Any]) -> str:
        """The assistant turn as the model wrote it (tool calls back in their ``<tool_call>`` form)."""
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        for tc in message.get("tool_calls") or []:
            fn = (tc or {}).get("function") or {}
            arguments = fn.get("arguments")
            try:
                arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
            except ValueError:
                pass
            call = json.dumps({"name": fn.get("name"), "arguments": arguments})
            text += f"\n<tool_call>\n{call}\n</tool_call>"
        return text.strip()

    def _decide(self, message: dict[str, Any]) -> Decision:
        raise NotImplementedError


class UITarsPolicy(CompatPolicy):
    """UI-TARS 1.0 / 1.5 over chat completions: the official prompt, answers parsed by :func:`parse_ui_tars`."""

    def _first_text(self, episode: Episode) -> str:
        return UI_TARS_PROMPT + episode.instruction

    def _decide(self, message: dict[str, Any]) -> Decision:
        return map_ui_tars(parse_ui_tars(text_of(message.get("content"))), self.builder)


class QwenPolicy(CompatPolicy):
    """Qwen2.5-VL / Qwen3-VL with the ``computer_use`` function, answers parsed by :func:`parse_qwen`."""

    def _extra(self, body: dict[str, Any], frame: Frame) -> None:
        size = (1000, 1000) if self.spec.coordinates == "normalized" else (frame.width, frame.height)
        body["tools"] = [qwen_tool(*size)]

    def _decide(self, message: dict[str, Any]) -> Decision:
        return map_qwen(parse_qwen(message), self.builder)
