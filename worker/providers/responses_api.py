"""The Responses API conversation shared by Northstar (Lightcone, PROVIDERS.md section 1) and OpenAI computer use
(section 2): server-side state through ``previous_response_id``, one ``computer_call_output`` per ``computer_call``
carrying the new screenshot, ``pending_safety_checks`` acknowledged in the next output once approved.

Turn 1 sends ``input = [context turns..., {"role": "user", "content": [input_text(instruction), input_text(each
message injected before the start), input_image(screenshot)]}]``; turn n sends ``previous_response_id`` and
``input = [computer_call_output / function_call_output for each call of the last answer, {"role": "user",
"content": [input_text(the last step's errors, then each injected message)]}]``. ``instructions`` (the task's
``system_prompt``) is sent every turn: the API does not carry it over. History trimming is the server's job here
(``truncation: "auto"`` for ``computer-use-preview``); ``model_screenshots_kept`` applies to client-side histories.

Answers are read through two tables: output items by ``type`` (:data:`TEXT_ITEMS` carry the thought,
:data:`CALL_ITEMS` the calls to answer) and actions by ``action.type`` (:func:`responses_actions`, one table for
both providers: OpenAI's types are a subset of Northstar's; the mapping tables are in ``northstar.py`` and
``openai_cua.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from worker.computer import Action
from worker.policy import Decision, Episode, PolicyError
from worker.providers.actions import (
    ActionBuilder,
    ActionMap,
    click_at,
    done,
    fail,
    move_to,
    no_action,
    refuse,
    table_entry,
)
from worker.providers.answers import AnswerError, int_of, number_of, parse_json_body, text_of
from worker.providers.base import ModelPolicy, last_step_problems
from worker.providers.screen import Frame

TERMINAL_TYPES = ("terminate", "done", "answer")
"""Northstar's terminal actions (also accepted as ``function_call`` names)."""
FAILURE_STATUSES = ("failure", "failed", "fail", "error")
TEXT_ITEMS = {"reasoning": "summary", "message": "content"}
"""Output items whose parts' ``text`` is the model's thought: item type -> the field listing the parts."""
CALL_ITEMS = {"computer_call": "computer", "function_call": "function"}
"""Output items the next request must answer: item type -> :attr:`Call.kind`."""
HELD_KEYS_REFUSED = ("click", "double_click", "triple_click", "right_click", "move", "drag", "scroll")
"""Pointer actions refused when they carry ``keys`` (modifiers held during the action are not supported)."""
HISTORY_BUTTONS = {"back": "ArrowLeft", "forward": "ArrowRight"}
"""The mouse's history buttons -> the arrow of the browser's own shortcut (Alt+arrow)."""


@dataclass
class Call:
    """A call of the last answer that the next request must answer: ``kind`` computer | function."""

    kind: str
    call_id: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    """``pending_safety_checks`` of the call, sent back as ``acknowledged_safety_checks`` (after approval)."""
    error: str | None = None
    """Why a function call was not run (its ``function_call_output``)."""


@dataclass
class _Output:
    """What one answer's ``output`` list adds up to; ``error``: the first action that could not be mapped (the
    actions of the calls after it are not mapped, but the calls are still answered)."""

    thoughts: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    error: str | None = None


def _failure(answer: dict[str, Any]) -> str | None:
    """Why a response failed (``status: "failed"`` or an ``error`` object), None when it did not."""
    if answer.get("status") != "failed" and not isinstance(answer.get("error"), dict):
        return None
    failure = answer.get("error") or {}
    return str(failure.get("message") or failure.get("code") or "no reason given")


def _pending_checks(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``computer_call``'s ``pending_safety_checks`` (``[{id, code, message}]``)."""
    return [c for c in item.get("pending_safety_checks") or [] if isinstance(c, dict)]


def _batch(item: dict[str, Any]) -> list[Any]:
    """A ``computer_call``'s actions: the GA tool's ``actions`` batch (run in order), else its one ``action``
    (the preview tool, Northstar)."""
    batch = item.get("actions")
    return batch if isinstance(batch, list) else [item.get("action")]


def _terminal(a: dict[str, Any]) -> Action:
    """``terminate{status}`` / ``done{result}`` / ``answer{result|text|status}`` -> done or fail."""
    status = text_of(a.get("status")).lower()
    text = a.get("result") or a.get("text") or a.get("reason") or a.get("message")
    if status in FAILURE_STATUSES:
        return fail(text or f"the model ended the task with status {status!r}")
    return done(text or (status if a.get("type") == "answer" and status not in ("", "success") else None))


# --- the action table ---------------------------------------------------------------------------------------------
def _end(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``terminate`` / ``done`` / ``answer``: the terminal action (:func:`_terminal`)."""
    return [_terminal(a)]


def _xy(a: dict[str, Any]) -> list[Any] | None:
    """``[x, y]`` of an action, or None when it has neither (the pointer's position is meant)."""
    return [a.get("x"), a.get("y")] if a.get("x") is not None or a.get("y") is not None else None


def _click(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``click{x,y,button}``: left | right; wheel is a middle click (refused); back | forward: the browser's
    Alt+arrow history shortcut (the point is not used)."""
    button = a.get("button") or "left"
    if isinstance(button, str) and button in HISTORY_BUTTONS:
        return b.key(["Alt", HISTORY_BUTTONS[button]])
    return b.click(_xy(a), button="middle" if button == "wheel" else button)


def _path_point(p: Any) -> Any:
    return [p.get("x"), p.get("y")] if isinstance(p, dict) else p


def _drag(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``drag{path: [{x,y}...]}`` (first to last point; intermediate points are not replayed) or Northstar's
    ``drag{x,y,end_x,end_y}``."""
    path = a.get("path")
    if isinstance(path, list) and len(path) >= 2:
        return b.drag(_path_point(path[0]), _path_point(path[-1]))
    if a.get("end_x") is not None:
        return b.drag(_xy(a), [a.get("end_x"), a.get("end_y")])
    raise AnswerError("drag needs a path of at least two points or x, y, end_x, end_y")


def _keypress(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``keypress{keys}`` / ``key{keys}`` (``key{key}`` too): one chord, a list or "ctrl+c"."""
    return b.key(a.get("keys") if a.get("keys") is not None else a.get("key"))


def _type(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
    """``type{text,x?,y?}`` / ``point_and_type{x,y,text}``: a click at x, y first when given."""
    xy = _xy(a)
    return [*(b.click(xy) if xy is not None else []), *b.type(a.get("text"))]


def _clamped(value: float, limit: int) -> float:
    return max(-limit, min(limit, value))


def _scroll(limit: int) -> ActionMap[dict[str, Any]]:
    """``scroll{x,y,scroll_x,scroll_y}``: pixel deltas, each clamped to +-``limit``."""
    def scroll(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
        dx = number_of(a.get("scroll_x") or 0, "scroll_x")
        dy = number_of(a.get("scroll_y"), "scroll_y")
        return b.scroll(_xy(a), _clamped(dx, limit), _clamped(dy, limit))
    return scroll


def _hscroll(limit: int) -> ActionMap[dict[str, Any]]:
    """Northstar's ``hscroll{x,y,scroll_x|amount}``: a horizontal pixel delta clamped to +-``limit``."""
    def hscroll(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
        dx = number_of(a.get("scroll_x") or a.get("amount"), "scroll_x")
        return b.scroll(_xy(a), _clamped(dx, limit), 0.0)
    return hscroll


def _wait(default: float) -> ActionMap[dict[str, Any]]:
    """``wait{ms}`` or ``wait{seconds|duration}``; ``default`` seconds without a (non-zero) duration."""
    def wait(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
        if a.get("ms") is not None:
            return b.wait(number_of(a.get("ms"), "ms") / 1000)
        return b.wait(a.get("seconds") or a.get("duration") or default)
    return wait


def responses_actions(scroll_limit: int, default_wait: float) -> dict[str, ActionMap[dict[str, Any]]]:
    """The Responses API action table (``action.type`` -> entry; the tables in ``northstar.py`` and
    ``openai_cua.py``). One table serves both providers (OpenAI's types are a subset of Northstar's); they differ
    in the scroll clamp (pixels) and the seconds of a ``wait`` without a duration."""
    return {
        "click": _click,
        "double_click": click_at(_xy, count=2),
        "triple_click": click_at(_xy, count=3),
        "right_click": click_at(_xy, button="right"),
        "move": move_to(_xy),
        "drag": _drag,
        "keypress": _keypress,
        "key": _keypress,
        "type": _type,
        "point_and_type": _type,
        "scroll": _scroll(scroll_limit),
        "hscroll": _hscroll(scroll_limit),
        "wait": _wait(default_wait),
        "screenshot": no_action,  # every step sends a fresh screenshot anyway
        "mouse_down": lambda b, a: b.mouse_down(_xy(a)),
        "mouse_up": lambda b, a: b.mouse_up(_xy(a)),
        **refuse(("key_down", "key_up"), "holding keys down is not supported; send the whole chord as keypress"),
        "navigate": lambda b, a: b.navigate(a.get("url")),
        **dict.fromkeys(TERMINAL_TYPES, _end),
    }


class ResponsesPolicy(ModelPolicy):
    """Base of :class:`~worker.providers.northstar.NorthstarPolicy` and
    :class:`~worker.providers.openai_cua.OpenAIComputerPolicy` (the request shape above; subclasses give the
    tool, the screenshot output item and the client)."""

    actions: ClassVar[dict[str, ActionMap[dict[str, Any]]]] = responses_actions(scroll_limit=2000, default_wait=2.0)
    """The action table: OpenAI's scroll clamp (+-2000 px) and ``wait`` (2 s); Northstar overrides it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.previous_id: str | None = None
        self.calls: list[Call] = []

    # -- per provider -------------------------------------------------------------------------------------------
    def _tool(self, frame: Frame) -> dict[str, Any]:
        raise NotImplementedError

    def _screenshot_output(self, frame: Frame) -> dict[str, Any]:
        raise NotImplementedError

    def _extra(self, body: dict[str, Any]) -> None:
        """Provider-specific request fields (OpenAI preview: ``truncation``)."""

    # -- request ------------------------------------------------------------------------------------------------
    def _request(self, frame: Frame, episode: Episode) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.spec.model, "tools": [self._tool(frame)]}
        if self.spec.send_temperature:
            body["temperature"] = episode.temperature
        if episode.system_prompt:
            body["instructions"] = episode.system_prompt
        texts = [*last_step_problems(episode), *episode.new_messages]
        image = {"type": "input_image", "image_url": frame.data_url(), "detail": "auto"}
        if self.previous_id is None:
            items: list[dict[str, Any]] = [{"role": t["role"], "content": t["content"]} for t in episode.context]
            content = [{"type": "input_text", "text": t} for t in (self._instruction(episode), *episode.new_messages)]
            items.append({"role": "user", "content": [*content, image]})
        else:
            body["previous_response_id"] = self.previous_id
            items = [self._output(call, frame) for call in self.calls]
            content = [{"type": "input_text", "text": t} for t in texts]
            if not self.calls:  # nothing to answer (the last answer had no usable call): show the screen again
                content = [*content, image]
            if content:
                items.append({"role": "user", "content": content})
        body["input"] = items
        self._extra(body)
        return body

    def _output(self, call: Call, frame: Frame) -> dict[str, Any]:
        if call.kind == "function":
            return {"type": "function_call_output", "call_id": call.call_id, "output": call.error or "ok"}
        item: dict[str, Any] = {"type": "computer_call_output", "call_id": call.call_id}
        if call.checks:
            item["acknowledged_safety_checks"] = call.checks
        item["output"] = self._screenshot_output(frame)
        return item

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        raw = self.client.responses.with_raw_response.create(**request)
        return parse_json_body(raw.http_response.text)

    def _tokens(self, answer: dict[str, Any]) -> tuple[int, int]:
        usage = answer.get("usage") or {}
        return int_of(usage.get("input_tokens")), int_of(usage.get("output_tokens"))

    # -- answer -------------------------------------------------------------------------------------------------
    def _parse(self, answer: dict[str, Any], episode: Episode) -> Decision:
        reason = _failure(answer)
        if reason is not None:
            raise PolicyError(f"{self.provider} API error: the response failed: {reason}")
        rid, output = answer.get("id"), answer.get("output")
        if not isinstance(rid, str) or not isinstance(output, list):
            raise AnswerError("a response needs an id and an output list")
        read = self._read_output(output)
        self.previous_id, self.calls = rid, read.calls
        text = "\n".join(t for t in read.thoughts if t).strip() or None
        if not read.calls:  # Done: an answer with no computer_call; its final text is the result
            return Decision([self._final(text)], thought=text)
        return self._safety_checks(Decision(read.actions, thought=text, error=read.error))

    def _read_output(self, output: list[Any]) -> _Output:
        """The answer's ``output`` items by type (:data:`TEXT_ITEMS`, :data:`CALL_ITEMS`; others are skipped).
        Raises AnswerError for a call without a ``call_id``."""
        read = _Output()
        for item in output:
            kind = item.get("type") if isinstance(item, dict) else None
            if not isinstance(kind, str):
                continue
            if kind in TEXT_ITEMS:
                read.thoughts += [text_of(p.get("text")) for p in item.get(TEXT_ITEMS[kind]) or []
                                  if isinstance(p, dict)]
            elif kind in CALL_ITEMS:
                self._read_call(item, kind, read)
        return read

    def _read_call(self, item: dict[str, Any], kind: str, read: _Output) -> None:
        """Record a ``computer_call`` / ``function_call`` and map its actions into ``read`` (unless an earlier
        action could not be mapped). Raises AnswerError for a call without a ``call_id``."""
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise AnswerError(f"a {kind} without a call_id")
        call = Call(CALL_ITEMS[kind], call_id, _pending_checks(item) if kind == "computer_call" else [])
        read.calls.append(call)
        if read.error is not None:
            return
        try:
            if kind == "function_call":
                read.actions += self._function(item)
            else:  # each mapped action is kept, so a batch that fails midway runs its first actions
                for action in _batch(item):
                    read.actions += self._map_action(action)
        except AnswerError as exc:
            read.error, call.error = f"{self.provider}: {exc}", str(exc)

    def _safety_checks(self, decision: Decision) -> Decision:
        """The decision with the calls' ``pending_safety_checks``: a question for the user, or a note in the
        thought when ``auto_approve_safety_checks`` is set."""
        checks = [c for call in self.calls for c in call.checks]
        if not checks:
            return decision
        summary = "; ".join(str(c.get("message") or c.get("code") or c.get("id")) for c in checks)
        if self.settings.auto_approve_safety_checks:
            return replace(decision, thought=f"{decision.thought or ''}\n(safety checks auto-approved: {summary})"
                           .strip())
        return replace(decision, ask_user=f"Safety check: {summary}. Resume the task or send a message to approve "
                                          f"the action; cancel the task to refuse.")

    def _function(self, item: dict[str, Any]) -> list[Action]:
        """A ``function_call`` named like a terminal action (``arguments``: its JSON fields) -> done or fail."""
        name = text_of(item.get("name"))
        try:
            args = json.loads(item.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise AnswerError(f"function_call {name!r} has arguments that are not JSON") from None
        if name in TERMINAL_TYPES and isinstance(args, dict):
            return [_terminal({**args, "type": name})]
        raise AnswerError(f"no function {name!r} here (only {', '.join(TERMINAL_TYPES)})")

    def _map_action(self, a: Any) -> list[Action]:
        """One Responses API action (``{"type": ..., ...}``) -> Actions through :attr:`actions`. Raises
        AnswerError: not an object with a type, ``keys`` held during a pointer action, an unknown type, or values
        the entry cannot use."""
        if not isinstance(a, dict) or not isinstance(a.get("type"), str):
            raise AnswerError(f"an action must be an object with a type, got {a!r}")
        kind = a["type"]
        if kind in HELD_KEYS_REFUSED and a.get("keys"):
            raise AnswerError(f"{kind} with held keys {a.get('keys')} is not supported")
        return table_entry(self.actions, kind, "action type")(self.builder, a)
