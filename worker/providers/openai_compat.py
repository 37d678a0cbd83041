"""Open-weight GUI models over OpenAI-compatible chat completions (vLLM, Ollama, TGI), with the ``openai`` SDK: the
conversation both dialects share (:class:`CompatPolicy`).

Wire format: PROVIDERS.md section 4. ``POST {base}/chat/completions`` where the entry's ``base_url`` ends in
``/v1``; the key is the entry's (or ``OPENAI_API_KEY``, else "EMPTY", which vLLM accepts). The history is kept
client-side: ``[system (system_prompt)?, context turns..., user (prompt + screenshot), assistant (answer), user
(the last step's errors, injected messages, screenshot), ...]``; screenshots beyond the last
``model_screenshots_kept`` are replaced by a text placeholder. Screenshots are ``image_url`` data URLs.

Two dialects (``ModelSpec.dialect``), each in its own module with its mapping table:

- **UI-TARS** (:class:`~.ui_tars.UITarsPolicy`): the official computer-use prompt with the instruction; the
  answer is ``Thought: ... Action: ...`` text.
- **Qwen-VL** (:class:`~.qwen.QwenPolicy`): the ``computer_use`` function is sent in ``tools``; the answer is tool
  calls.

A task's ``output_schema`` is asked for in the first user text (``shared.output_schema.answer_prompt``); the answer
is ``finished(content=...)`` (UI-TARS) or ``answer{text}`` (Qwen), validated by the loop.
"""

from __future__ import annotations

import json
import os
from typing import Any

import openai

from worker.policy import Decision, Episode
from worker.providers.answers import AnswerError, int_of, parse_json_body
from worker.providers.base import ModelPolicy, last_step_problems
from worker.providers.screen import Frame

PLACEHOLDER = "(an older screenshot, omitted)"


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
    """The chat-completions conversation shared by :class:`~.ui_tars.UITarsPolicy` and :class:`~.qwen.QwenPolicy`.

    Raises ``PolicyError`` from ``decide`` when the call fails after the SDK's retries (``openai.APIError``)."""

    provider = "openai-compat"
    sdk_error = openai.OpenAIError
    http_client = openai.DefaultHttpxClient

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.messages: list[dict[str, Any]] = []
        self._sent: list[dict[str, Any]] = []

    def _make_client(self) -> Any:
        options = self._client_options()
        options["api_key"] = options["api_key"] or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        return openai.OpenAI(**options)

    def _first_text(self, episode: Episode) -> str:
        """The first user text: the instruction (with the request for an ``output_schema`` answer)."""
        return self._instruction(episode)

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
