"""Anthropic computer use through the Messages API, with the official ``anthropic`` SDK.

Wire format: PROVIDERS.md section 3. ``POST {base}/v1/messages`` through ``client.beta.messages`` (base: the entry's
``base_url``, else ``ANTHROPIC_BASE_URL``, else ``https://api.anthropic.com``), key ``ANTHROPIC_API_KEY``. The tool
is ``{"type": "computer_20250124", "name": "computer", "display_width_px", "display_height_px"}`` with the beta
``computer-use-2025-01-24``, or ``computer_20251124`` (+ ``enable_zoom``) with ``computer-use-2025-11-24``
(``ModelSpec.tool``). Tool-use blocks named per action (the ``computer_toolset_20260801`` style) are read too.
The task's ``temperature`` is not sent: the API version SDK 2.x speaks (2026-10-21) refuses sampling parameters;
an entry with ``"send_temperature": true`` sends it anyway (for a proxy or an endpoint on the older version).

No server state: every request resends the whole ``messages`` list: the task's ``context`` turns, the first user
turn (instruction, messages injected before the start, screenshot), then per step the assistant turn as returned
and a user turn of ``tool_result`` blocks (``is_error`` with the reason when an action failed or could not be
mapped; the new screenshot in the last one) followed by injected messages as text. Screenshots beyond the last
``model_screenshots_kept`` are replaced by a text placeholder. Coordinates are pixels of the screenshot sent,
scaled down first to at most ~1.15 MP and 1568 px a side (``max_pixels`` / ``max_long_edge``).

Action mapping (Anthropic ``input.action`` -> ``worker.computer.Action``; the table is :data:`ACTIONS`, its
pointer and typing entries ``actions.COORDINATE_ACTIONS``, shared with Qwen-VL):

=====================================  ======================================================================
Anthropic                              Lodestar
=====================================  ======================================================================
screenshot                             nothing (the tool_result carries the next screenshot)
left_click{coordinate?}                click (at the pointer when no coordinate)
right_click / double_click             right_click / double_click
triple_click                           triple_click
middle_click                           failed step (is_error tool_result): middle clicks are not supported
left_click / scroll with ``text``      failed step: modifier keys held during pointer actions not supported
left_click_drag{start_coordinate,      drag (from the pointer when no start_coordinate)
  coordinate}
left_mouse_down / left_mouse_up        move to the press point; the release becomes one drag (or a click)
mouse_move{coordinate}                 move
type{text}                             type
key{text: "ctrl+s"}                    key (xdotool names; "a b" presses a then b)
hold_key{text, duration}               approximated: the chord pressed once, then a wait of ``duration``
scroll{coordinate, scroll_direction,   scroll by ``scroll_amount`` x 100 px (wheel notches) in the direction
  scroll_amount}
wait{duration}                         wait (seconds, at most 60; 1 s when absent)
cursor_position                        no action: answered from the tracked pointer ("X=..,Y=..", model px)
zoom{region}                           no action: the next tool_result carries that region of the new
                                       screenshot at full resolution
any other action                       failed step naming it (is_error tool_result)
stop_reason end_turn, no tool_use      done, with the answer's text as the result
stop_reason refusal                    fail with the text
other stop without tool_use            failed step (e.g. max_tokens); the model is asked to go on
=====================================  ======================================================================
Anthropic reports no failure and asks no questions of its own: a model that gives up ends its turn (done).

A task's ``output_schema`` is a second tool, ``final_answer``, whose ``input_schema`` is the schema (wrapped in
``{"answer": ...}`` when its root is not an object: ``shared.output_schema.object_schema``); the first user text
asks the model to call it when the task is done. Its input is the structured answer; one that does not validate
is answered by an ``is_error`` tool_result quoting the errors. A plain ``end_turn`` text is read as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anthropic

from shared.output_schema import object_schema, unwrap
from worker.computer import Action
from worker.policy import Decision, Episode, PolicyError
from worker.providers.actions import (
    COORDINATE_ACTIONS,
    SCROLL_DIRECTIONS,
    SCROLL_NOTCH_PX,
    ActionBuilder,
    ActionMap,
    answer,
    done,
    fail,
    no_action,
    table_entry,
    wait_seconds,
)
from worker.providers.answers import AnswerError, int_of, number_of, parse_json_body, text_of
from worker.providers.base import ModelPolicy, last_step_problems
from worker.providers.screen import Frame

BETAS = {"computer_20250124": "computer-use-2025-01-24", "computer_20251124": "computer-use-2025-11-24"}
FINAL_ANSWER = "final_answer"
"""The tool a task with an ``output_schema`` answers through."""
FINAL_ANSWER_PROMPT = ("When the task is done, call the final_answer tool with your answer as its input (it must "
                       "match the tool's input schema).")
PLACEHOLDER = "(an older screenshot, omitted)"
HELD_KEYS_REFUSED = ("left_click", "right_click", "middle_click", "double_click", "triple_click", "scroll")
"""Pointer actions refused when they carry ``text`` (keys held during the action are not supported)."""


# --- the action table ---------------------------------------------------------------------------------------------
def _key(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``key{text}``: xdotool chords separated by spaces ("ctrl+a BackSpace" presses one, then the other)."""
    chords = text_of(a.get("text")).split()
    if not chords:
        raise AnswerError("key needs text such as 'ctrl+s'")
    return [action for chord in chords for action in b.key(chord)]


def _hold_key(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``hold_key{text, duration}``, approximated: the chord pressed once, then a wait of ``duration`` seconds."""
    return [*b.key(text_of(a.get("text"))), *b.wait(a.get("duration") or 0)]


def _scroll(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``scroll{coordinate, scroll_direction, scroll_amount}``: ``scroll_amount`` wheel notches of
    ``SCROLL_NOTCH_PX`` in the direction."""
    amount = number_of(a.get("scroll_amount"), "scroll_amount") * SCROLL_NOTCH_PX
    direction = SCROLL_DIRECTIONS.get(text_of(a.get("scroll_direction")))
    if direction is None:
        raise AnswerError(f"scroll_direction must be up, down, left or right, not {a.get('scroll_direction')!r}")
    return b.scroll(a.get("coordinate"), direction[0] * amount, direction[1] * amount)


def _zoom_region(a: dict[str, Any]) -> list[float]:
    """``zoom{region: [x0, y0, x1, y1]}`` (model coordinates; cropped when the tool_result is built)."""
    region = a.get("region")
    if not isinstance(region, list) or len(region) != 4:
        raise AnswerError("zoom needs region [x0, y0, x1, y1]")
    return region


ACTIONS: dict[str, ActionMap[dict[str, Any]]] = {
    **COORDINATE_ACTIONS,  # left/right/middle/double/triple_click, mouse_move, left_click_drag, type
    "screenshot": no_action,  # the tool_result carries the next screenshot
    "left_mouse_down": lambda b, a: b.mouse_down(a.get("coordinate")),
    "left_mouse_up": lambda b, a: b.mouse_up(a.get("coordinate")),
    "key": _key,
    "hold_key": _hold_key,
    "scroll": _scroll,
    "wait": wait_seconds("duration", default=1),
}
"""Anthropic ``input.action`` (or a per-action tool name) -> entry: the table in the module docstring, but for
``cursor_position`` and ``zoom``, which return data instead of acting (``AnthropicComputerPolicy._map``)."""


@dataclass
class ToolUse:
    """A ``tool_use`` of the last answer and what its ``tool_result`` must say. ``start``/``end``: its actions'
    indexes in the decision; ``error``: why it was not run; ``answer``: text it returns (cursor_position);
    ``zoom``: the region to return (zoom)."""

    id: str
    start: int
    end: int
    error: str | None = None
    answer: str | None = None
    zoom: list[float] | None = None


def _image(frame: Frame) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": frame.mime, "data": frame.base64()}}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [_text(content)] if isinstance(content, str) else list(content)


def append_turn(messages: list[dict[str, Any]], role: str, content: Any) -> list[dict[str, Any]]:
    """``messages`` plus one turn, merged into the last one when it has the same role (the API alternates)."""
    if messages and messages[-1]["role"] == role:
        return [*messages[:-1], {"role": role, "content": _blocks(messages[-1]["content"]) + _blocks(content)}]
    return [*messages, {"role": role, "content": content}]


def prune_images(messages: list[dict[str, Any]], keep: int) -> None:
    """Replace all but the last ``keep`` images (user image blocks and images inside tool_results) by text, in
    place."""
    seen = 0
    for message in reversed(messages):
        if message["role"] != "user" or isinstance(message["content"], str):
            continue
        for block in reversed(message["content"]):
            holders = [block] if block.get("type") == "image" else []
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                holders = [b for b in block["content"] if b.get("type") == "image"]
            for holder in reversed(holders):
                seen += 1
                if seen > keep:
                    holder.clear()
                    holder.update(_text(PLACEHOLDER))


class AnthropicComputerPolicy(ModelPolicy):
    """A Policy driven by a Claude model with the computer tool, through ``anthropic.Anthropic``.

    Raises ``PolicyError`` from ``decide`` when the call fails after the SDK's retries (``anthropic.APIError``)
    or the SDK has no credentials (``anthropic.AnthropicError``)."""

    provider = "anthropic"
    sdk_error = anthropic.AnthropicError
    native_output = True
    http_client = anthropic.DefaultHttpxClient

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.messages: list[dict[str, Any]] = []
        self.pending: list[ToolUse] = []
        self._sent: list[dict[str, Any]] = []

    def _make_client(self) -> Any:
        options = self._client_options()
        if options["api_key"] is None:
            del options["api_key"]  # the SDK's own credential chain (ANTHROPIC_API_KEY, ...)
        return anthropic.Anthropic(**options)

    # -- request ------------------------------------------------------------------------------------------------
    def _request(self, frame: Frame, episode: Episode) -> dict[str, Any]:
        notes = [_text(m) for m in episode.new_messages]
        if not self.messages:
            head: list[dict[str, Any]] = []
            for turn in episode.context:
                head = append_turn(head, turn["role"], turn["content"])
            if head and head[0]["role"] != "user":
                head.insert(0, {"role": "user", "content": "(earlier conversation)"})
            intro = [_text(episode.instruction)] + ([_text(FINAL_ANSWER_PROMPT)] if self.output_schema else [])
            content = [*intro, *notes, _image(frame)]
        else:
            head = self.messages
            content = self._tool_results(frame, episode)
            if not self.pending:
                content += [*(_text(p) for p in last_step_problems(episode)), _image(frame)]
            content += notes
        messages = append_turn(head, "user", content)
        prune_images(messages, self.keep_screenshots)
        self._sent = messages
        tool: dict[str, Any] = {"type": self.spec.tool, "name": "computer", "display_width_px": frame.width,
                                "display_height_px": frame.height}
        if self.spec.tool == "computer_20251124":
            tool["enable_zoom"] = True
        tools: list[dict[str, Any]] = [tool]
        if self.output_schema is not None:
            tools.append({"name": FINAL_ANSWER, "input_schema": object_schema(self.output_schema)[0],
                          "description": "Give the task's final answer (call it once, when the task is done)."})
        body: dict[str, Any] = {"model": self.spec.model, "max_tokens": self.spec.max_tokens, "messages": messages,
                                "tools": tools, "betas": [BETAS[self.spec.tool]]}
        if self.spec.send_temperature:  # not a parameter of SDK 2.x (API 2026-10-21 refuses it): for older endpoints
            body["extra_body"] = {"temperature": episode.temperature}
        if episode.system_prompt:
            body["system"] = episode.system_prompt
        return body

    def _tool_results(self, frame: Frame, episode: Episode) -> list[dict[str, Any]]:
        results = episode.history[-1].results if episode.history else []
        blocks: list[dict[str, Any]] = []
        for use in self.pending:
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use.id, "content": []}
            failed = [r.error or "failed" for r in results[use.start:use.end] if not r.ok]
            if use.error or failed:
                block.update(is_error=True, content=[_text(use.error or failed[0])])
            elif use.end > len(results):
                block.update(is_error=True, content=[_text("not run: an earlier action failed")])
            elif use.answer:
                block["content"].append(_text(use.answer))
            elif use.zoom is not None:
                try:
                    block["content"].append(_image(self.screen.crop(frame, use.zoom)))
                except AnswerError as exc:
                    block.update(is_error=True, content=[_text(str(exc))])
            blocks.append(block)
        if blocks:
            blocks[-1]["content"].append(_image(frame))
        for block in blocks:
            if not block["content"]:
                del block["content"]  # a plain success: no content
        return blocks

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        raw = self.client.beta.messages.with_raw_response.create(**request)
        return parse_json_body(raw.http_response.text)

    def _tokens(self, answer: dict[str, Any]) -> tuple[int, int]:
        usage = answer.get("usage") or {}
        tin = sum(int_of(usage.get(k)) for k in ("input_tokens", "cache_creation_input_tokens",
                                                  "cache_read_input_tokens"))
        return tin, int_of(usage.get("output_tokens"))

    # -- answer -------------------------------------------------------------------------------------------------
    def _parse(self, answer: dict[str, Any], episode: Episode) -> Decision:
        if answer.get("type") == "error":
            raise PolicyError(f"anthropic API error: {(answer.get('error') or {}).get('message')}")
        content = answer.get("content")
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise AnswerError("a message needs a content list")
        uses = [b for b in content if b.get("type") == "tool_use"]
        if any(not isinstance(u.get("id"), str) for u in uses):
            raise AnswerError("a tool_use without an id")
        self.messages = [*self._sent, {"role": "assistant", "content": content}]
        text = "\n".join(text_of(b.get("text")) for b in content if b.get("type") == "text").strip() or None
        self.pending = []
        actions: list[Action] = []
        error: str | None = None
        for block in uses:
            use = ToolUse(block["id"], len(actions), len(actions))
            if error is not None:
                use.error = "not run: an earlier action in this turn could not be used"
            else:
                try:
                    actions += self._map(block, use)
                except AnswerError as exc:
                    error, use.error = f"anthropic: {exc}", str(exc)
            use.end = len(actions)
            self.pending.append(use)
        if uses:
            return Decision(actions, thought=text, error=error)
        stop = answer.get("stop_reason")
        if stop == "refusal":
            return Decision([fail(text or "the model refused the task")], thought=text)
        if stop in (None, "end_turn", "stop_sequence"):
            return Decision([done(text)], thought=text)
        return Decision([], thought=text, error=f"anthropic: the answer stopped ({stop}) without an action")

    def _map(self, block: dict[str, Any], use: ToolUse) -> list[Action]:
        """One ``tool_use`` -> Actions through :data:`ACTIONS` (the table in the module docstring);
        ``cursor_position`` and ``zoom`` act on nothing and set what ``use``'s tool_result returns instead.
        Raises AnswerError: no input object, ``text`` (held keys) on a pointer action, an unknown action, or values
        the entry cannot use."""
        data = block.get("input")
        if not isinstance(data, dict):
            raise AnswerError("a tool_use needs an input object")
        if block.get("name") == FINAL_ANSWER and self.output_schema is not None:
            return [answer(unwrap(data, object_schema(self.output_schema)[1]))]
        action = data.get("action") if block.get("name") == "computer" else block.get("name")
        if action in HELD_KEYS_REFUSED and data.get("text"):
            raise AnswerError(f"{action} with held keys {data.get('text')!r} is not supported")
        if action == "cursor_position":
            use.answer = self._cursor_position()
            return []
        if action == "zoom":
            use.zoom = _zoom_region(data)
            return []
        return table_entry(ACTIONS, action, "computer action")(self.builder, data)

    def _cursor_position(self) -> str:
        """``cursor_position``'s answer: the tracked pointer in the model's coordinates, ``"X=..,Y=.."``."""
        b = self.builder
        if b.cursor is None or b.frame is None:
            raise AnswerError("the pointer has not been placed yet")
        x, y = self.screen.from_viewport(b.frame, *b.cursor)
        return f"X={x},Y={y}"
