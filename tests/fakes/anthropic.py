"""Fake Anthropic Messages API (PROVIDERS.md section 3): ``POST /v1/messages`` with the computer tool beta.

Accepts both auth styles (``x-api-key`` or ``Authorization: Bearer``), requires ``anthropic-version`` and the
``anthropic-beta`` matching the tool version, and checks the resent history: roles alternate from a user turn, every
``tool_use`` of an assistant turn is answered first thing in the next user turn by a ``tool_result`` with its id.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.server import FakeProvider, Session, image_size

BETAS = {"computer_20250124": "computer-use-2025-01-24", "computer_20251124": "computer-use-2025-11-24"}
TOP_LEVEL = {"model", "max_tokens", "messages", "tools", "temperature", "system"}


def check_image_block(block: dict[str, Any]) -> tuple[int, int]:
    assert set(block) == {"type", "source"} and block["type"] == "image", block
    source = block["source"]
    assert set(source) == {"type", "media_type", "data"} and source["type"] == "base64", source
    assert source["media_type"] in ("image/jpeg", "image/png"), source["media_type"]
    return image_size(source["data"])


class FakeAnthropic(FakeProvider):
    paths = ("/v1/messages",)

    def check(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        assert headers.get("x-api-key") == self.key or headers.get("authorization") == f"Bearer {self.key}", \
            "no valid x-api-key or bearer key"
        assert headers.get("anthropic-version"), "anthropic-version header missing"
        allowed = TOP_LEVEL if headers.get("anthropic-version") == "2023-06-01" else TOP_LEVEL - {"temperature"}
        assert set(body) <= allowed, f"unexpected fields {sorted(set(body) - allowed)} (version " \
                                     f"{headers.get('anthropic-version')} has no sampling parameters)"
        assert isinstance(body.get("model"), str) and isinstance(body.get("max_tokens"), int)
        tools = body.get("tools")
        assert isinstance(tools, list) and tools, tools
        tool = tools[0]
        for custom in tools[1:]:  # client tools (a task's final_answer): a name and an object input_schema
            assert set(custom) <= {"type", "name", "description", "input_schema"}, custom
            assert custom.get("type", "custom") == "custom" and isinstance(custom.get("name"), str), custom
            assert custom["name"] != "computer" and custom.get("input_schema", {}).get("type") == "object", custom
        assert tool.get("type") in BETAS and tool.get("name") == "computer", tool
        assert set(tool) <= {"type", "name", "display_width_px", "display_height_px", "enable_zoom"}, tool
        assert BETAS[tool["type"]] in headers.get("anthropic-beta", ""), f"beta header {headers.get('anthropic-beta')}"
        messages = body.get("messages")
        assert isinstance(messages, list) and messages and messages[0]["role"] == "user", "must start with user"
        pending: set[str] = set()
        for i, message in enumerate(messages):
            assert set(message) == {"role", "content"}, message.keys()
            assert message["role"] == ("user" if i % 2 == 0 else "assistant"), "roles must alternate"
            content = message["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            assert isinstance(blocks, list) and blocks, f"empty content in message {i}"
            if message["role"] == "user":
                results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
                assert set(results) == pending, f"message {i} answers {results}, expected {sorted(pending)}"
                assert [b.get("type") for b in blocks[:len(results)]] == ["tool_result"] * len(results), \
                    "tool_result blocks must come first"
                for block in blocks:
                    self._check_user_block(block)
                pending = set()
            else:
                pending = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        assert not pending, "the last assistant tool_use is not answered"

    def _check_user_block(self, block: dict[str, Any]) -> None:
        kind = block.get("type")
        if kind == "text":
            assert set(block) == {"type", "text"} and isinstance(block["text"], str), block
        elif kind == "image":
            check_image_block(block)
        else:
            assert kind == "tool_result", block
            assert set(block) <= {"type", "tool_use_id", "content", "is_error"}, block
            assert isinstance(block.get("is_error", False), bool)
            for inner in block.get("content", []):
                if inner.get("type") == "image":
                    check_image_block(inner)
                else:
                    assert inner.get("type") == "text" and isinstance(inner.get("text"), str), inner

    def first_text(self, body: dict[str, Any]) -> str:
        """The user texts of the request (the task's key is in the instruction, after any context turns)."""
        texts = []
        for message in body.get("messages") or []:
            if message.get("role") == "user":
                content = message["content"]
                texts += [content] if isinstance(content, str) else [b.get("text", "") for b in content
                                                                     if b.get("type") == "text"]
        return " ".join(texts)

    def error_body(self, status: int, message: str) -> Any:
        kind = {400: "invalid_request_error", 429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    # -- answers ----------------------------------------------------------------------------------------------
    def message(self, content: list[dict[str, Any]], stop_reason: str | None = None,
                usage: tuple[int, int] = (100, 20)) -> dict[str, Any]:
        if stop_reason is None:
            stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        return {"id": self.new_id("msg"), "type": "message", "role": "assistant", "model": "fake", "content": content,
                "stop_reason": stop_reason, "stop_sequence": None,
                "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}

    def tool_use(self, session: Session, action: str, **inputs: Any) -> dict[str, Any]:
        block_id = self.new_id("toolu")
        session.data.setdefault("tool_uses", []).append(block_id)
        return {"type": "tool_use", "id": block_id, "name": "computer", "input": {"action": action, **inputs}}

    def client_tool_use(self, session: Session, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """A ``tool_use`` of a client tool (``final_answer``) with ``inputs`` as its input."""
        block_id = self.new_id("toolu")
        session.data.setdefault("tool_uses", []).append(block_id)
        return {"type": "tool_use", "id": block_id, "name": name, "input": inputs}


# --- reading requests in tests -----------------------------------------------------------------------------------
def last_user_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body["messages"][-1]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def images_in(body: dict[str, Any]) -> list[tuple[int, int]]:
    """Sizes of every image in the history, oldest first."""
    sizes = []
    for message in body["messages"]:
        if isinstance(message["content"], str):
            continue
        for block in message["content"]:
            if block.get("type") == "image":
                sizes.append(check_image_block(block))
            for inner in block.get("content", []) if block.get("type") == "tool_result" else []:
                if inner.get("type") == "image":
                    sizes.append(check_image_block(inner))
    return sizes
