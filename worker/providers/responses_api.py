"""The Responses API conversation shared by Northstar (Lightcone, PROVIDERS.md section 1) and OpenAI computer use
(section 2): server-side state through ``previous_response_id``, one ``computer_call_output`` per ``computer_call``
carrying the new screenshot, ``pending_safety_checks`` acknowledged in the next output once approved.

Turn 1 sends ``input = [context turns..., {"role": "user", "content": [input_text(instruction), input_text(each
message injected before the start), input_image(screenshot)]}]``; turn n sends ``previous_response_id`` and
``input = [computer_call_output / function_call_output for each call of the last answer, {"role": "user",
"content": [input_text(the last step's errors, then each injected message)]}]``. ``instructions`` (the task's
``system_prompt``) is sent every turn: the API does not carry it over. History trimming is the server's job here
(``truncation: "auto"`` for ``computer-use-preview``); ``model_screenshots_kept`` applies to client-side histories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from worker.computer import Action
from worker.policy import Decision, Episode, PolicyError
from worker.providers.base import (
    AnswerError,
    Frame,
    ModelPolicy,
    done,
    fail,
    int_of,
    last_step_problems,
    number_of,
    parse_json_body,
    text_of,
)

TERMINAL_TYPES = ("terminate", "done", "answer")
"""Northstar's terminal actions (also accepted as ``function_call`` names)."""
FAILURE_STATUSES = ("failure", "failed", "fail", "error")


@dataclass
class Call:
    """A call of the last answer that the next request must answer: ``kind`` computer | function."""

    kind: str
    call_id: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    """``pending_safety_checks`` of the call, sent back as ``acknowledged_safety_checks`` (after approval)."""
    error: str | None = None
    """Why a function call was not run (its ``function_call_output``)."""


def _terminal(a: dict[str, Any]) -> Action:
    """``terminate{status}`` / ``done{result}`` / ``answer{result|text|status}`` -> done or fail."""
    status = text_of(a.get("status")).lower()
    text = a.get("result") or a.get("text") or a.get("reason") or a.get("message")
    if status in FAILURE_STATUSES:
        return fail(text or f"the model ended the task with status {status!r}")
    return done(text or (status if a.get("type") == "answer" and status not in ("", "success") else None))


class ResponsesPolicy(ModelPolicy):
    """Base of :class:`~worker.providers.northstar.NorthstarPolicy` and
    :class:`~worker.providers.openai_cua.OpenAIComputerPolicy` (the request shape above; subclasses give the
    tool, the screenshot output item and the client)."""

    scroll_limit: ClassVar[int] = 2000
    """Largest scroll_x / scroll_y honoured, in pixels (Northstar: 500)."""
    default_wait: ClassVar[float] = 2.0
    """Seconds of a ``wait`` without a duration."""

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
            content = [{"type": "input_text", "text": t} for t in (episode.instruction, *episode.new_messages)]
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
        if answer.get("status") == "failed" or isinstance(answer.get("error"), dict):
            failure = answer.get("error") or {}
            raise PolicyError(f"{self.provider} API error: the response failed: "
                              f"{failure.get('message') or failure.get('code') or 'no reason given'}")
        rid, output = answer.get("id"), answer.get("output")
        if not isinstance(rid, str) or not isinstance(output, list):
            raise AnswerError("a response needs an id and an output list")
        thoughts: list[str] = []
        calls: list[Call] = []
        actions: list[Action] = []
        error: str | None = None
        for item in output:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == "reasoning":
                thoughts += [text_of(s.get("text")) for s in item.get("summary") or [] if isinstance(s, dict)]
            elif kind == "message":
                thoughts += [text_of(c.get("text")) for c in item.get("content") or [] if isinstance(c, dict)]
            elif kind in ("computer_call", "function_call"):
                call_id = item.get("call_id")
                if not isinstance(call_id, str) or not call_id:
                    raise AnswerError(f"a {kind} without a call_id")
                call = Call("computer" if kind == "computer_call" else "function", call_id)
                calls.append(call)
                try:
                    if kind == "computer_call":
                        call.checks = [c for c in item.get("pending_safety_checks") or [] if isinstance(c, dict)]
                        batch = item.get("actions")
                        for raw_action in batch if isinstance(batch, list) else [item.get("action")]:
                            actions += self._map_action(raw_action) if error is None else []
                    else:
                        actions += self._function(item, call) if error is None else []
                except AnswerError as exc:
                    error = f"{self.provider}: {exc}"
                    call.error = call.error or str(exc)
        self.previous_id, self.calls = rid, calls
        text = "\n".join(t for t in thoughts if t).strip() or None
        if not calls:  # Done: an answer with no computer_call; its final text is the result
            return Decision([done(text)], thought=text)
        checks = [c for call in calls for c in call.checks]
        ask = None
        if checks:
            summary = "; ".join(str(c.get("message") or c.get("code") or c.get("id")) for c in checks)
            if self.settings.auto_approve_safety_checks:
                text = f"{text or ''}\n(safety checks auto-approved: {summary})".strip()
            else:
                ask = (f"Safety check: {summary}. Resume the task or send a message to approve the action; "
                       f"cancel the task to refuse.")
        return Decision(actions, thought=text, error=error, ask_user=ask)

    def _function(self, item: dict[str, Any], call: Call) -> list[Action]:
        name = text_of(item.get("name"))
        try:
            args = json.loads(item.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise AnswerError(f"function_call {name!r} has arguments that are not JSON") from None
        if name in TERMINAL_TYPES and isinstance(args, dict):
            return [_terminal({**args, "type": name})]
        raise AnswerError(f"no function {name!r} here (only {', '.join(TERMINAL_TYPES)})")

    def _map_action(self, a: Any) -> list[Action]:
        """One Responses API action (``{"type": ..., ...}``) -> Actions (the tables in the provider modules)."""
        if not isinstance(a, dict) or not isinstance(a.get("type"), str):
            raise AnswerError(f"an action must be an object with a type, got {a!r}")
        b, kind = self.builder, a["type"]
        xy = [a.get("x"), a.get("y")] if a.get("x") is not None or a.get("y") is not None else None
        if kind in ("click", "double_click", "triple_click", "right_click", "move", "drag", "scroll") \
                and a.get("keys"):
            raise AnswerError(f"{kind} with held keys {a.get('keys')} is not supported")
        if kind == "click":
            button = a.get("button") or "left"
            if button in ("back", "forward"):  # the mouse's history buttons: the browser's own shortcut
                return b.key(["Alt", "ArrowLeft" if button == "back" else "ArrowRight"])
            return b.click(xy, button="middle" if button == "wheel" else button)
        if kind in ("double_click", "triple_click"):
            return b.click(xy, count=2 if kind == "double_click" else 3)
        if kind == "right_click":
            return b.click(xy, button="right")
        if kind == "move":
            return b.move(xy)
        if kind == "drag":
            path = a.get("path")
            if isinstance(path, list) and len(path) >= 2:
                points = [[p.get("x"), p.get("y")] if isinstance(p, dict) else p for p in path]
                return b.drag(points[0], points[-1])  # intermediate points are not replayed
            if a.get("end_x") is not None:
                return b.drag(xy, [a.get("end_x"), a.get("end_y")])
            raise AnswerError("drag needs a path of at least two points or x, y, end_x, end_y")
        if kind in ("keypress", "key"):
            return b.key(a.get("keys") if a.get("keys") is not None else a.get("key"))
        if kind in ("type", "point_and_type"):
            return [*(b.click(xy) if xy is not None else []), *b.type(a.get("text"))]
        if kind in ("scroll", "hscroll"):
            limit = self.scroll_limit
            dx = number_of(a.get("scroll_x") or (a.get("amount") if kind == "hscroll" else 0), "scroll_x")
            dy = 0.0 if kind == "hscroll" else number_of(a.get("scroll_y"), "scroll_y")
            return b.scroll(xy, max(-limit, min(limit, dx)), max(-limit, min(limit, dy)))
        if kind == "wait":
            if a.get("ms") is not None:
                return b.wait(number_of(a.get("ms"), "ms") / 1000)
            return b.wait(a.get("seconds") or a.get("duration") or self.default_wait)
        if kind == "screenshot":
            return []  # every step sends a fresh screenshot anyway
        if kind == "mouse_down":
            return b.mouse_down(xy)
        if kind == "mouse_up":
            return b.mouse_up(xy)
        if kind in ("key_down", "key_up"):
            raise AnswerError(f"{kind}: holding keys down is not supported; send the whole chord as keypress")
        if kind == "navigate":
            return b.navigate(a.get("url"))
        if kind in TERMINAL_TYPES:
            return [_terminal(a)]
        raise AnswerError(f"unknown action type {kind!r}")
