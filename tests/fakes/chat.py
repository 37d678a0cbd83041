"""Fake OpenAI-compatible chat completions server (vLLM-style, PROVIDERS.md section 4): ``POST /v1/chat/completions``
for UI-TARS (answers in text) and Qwen-VL (``tool_calls`` or ``<tool_call>`` blocks)."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fakes.server import FakeProvider, check_data_url

TOP_LEVEL = {"model", "messages", "max_tokens", "temperature", "tools"}


class FakeChat(FakeProvider):
    paths = ("/v1/chat/completions",)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def check(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        assert headers.get("authorization") == f"Bearer {self.key}", f"auth header {headers.get('authorization')!r}"
        assert set(body) <= TOP_LEVEL, f"unexpected fields {sorted(set(body) - TOP_LEVEL)}"
        assert isinstance(body.get("model"), str) and isinstance(body.get("max_tokens"), int)
        for tool in body.get("tools", []):
            assert tool["type"] == "function" and tool["function"]["name"] == "computer_use", tool
            assert isinstance(tool["function"]["description"], str) and tool["function"]["parameters"]["type"] == \
                "object"
        messages = body.get("messages")
        assert isinstance(messages, list) and messages, "messages must be a non-empty list"
        for message in messages:
            assert set(message) == {"role", "content"} and message["role"] in ("system", "user", "assistant"), message
            content = message["content"]
            if isinstance(content, str):
                continue
            assert message["role"] == "user" and isinstance(content, list) and content, message
            for part in content:
                if part.get("type") == "text":
                    assert set(part) == {"type", "text"}, part
                else:
                    assert part.get("type") == "image_url" and set(part) == {"type", "image_url"}, part
                    check_data_url(part["image_url"]["url"])
        assert messages[-1]["role"] == "user", "the last message must be the user's"

    def first_text(self, body: dict[str, Any]) -> str:
        """The user texts of the request (the task's key is in the instruction, after any context turns)."""
        texts = []
        for message in body.get("messages") or []:
            if message.get("role") == "user":
                content = message["content"]
                texts += [content] if isinstance(content, str) else [p.get("text", "") for p in content
                                                                     if p.get("type") == "text"]
        return " ".join(texts)

    def completion(self, content: str | None, tool_calls: list[dict[str, Any]] | None = None,
                   usage: tuple[int, int] = (300, 30)) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls is not None:
            message["tool_calls"] = [{"id": self.new_id("call"), "type": "function",
                                      "function": {"name": "computer_use", "arguments": json.dumps(a)}}
                                     for a in tool_calls]
        return {"id": self.new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": "fake", "choices": [{"index": 0, "message": message,
                                              "finish_reason": "tool_calls" if tool_calls else "stop"}],
                "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


def last_user(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body["messages"][-1]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def images_in(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [check_data_url(p["image_url"]["url"]) for m in body["messages"] if isinstance(m["content"], list)
            for p in m["content"] if p.get("type") == "image_url"]
