"""Fake Responses API servers: Lightcone (Northstar, PROVIDERS.md section 1) and OpenAI computer use (section 2).

Lightcone serves ``POST /v1/responses`` on its base URL; OpenAI serves ``POST /v1/responses`` where the client's
base URL is ``{url}/v1``. Every request is checked field by field (:meth:`FakeResponses.check`).
"""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.server import FakeProvider, Session, check_data_url

TOP_LEVEL = {"model", "input", "tools", "temperature", "instructions", "previous_response_id", "truncation"}


class FakeResponses(FakeProvider):
    """``flavor``: "lightcone" (tool computer_use, outputs as input_image) or "openai" (tool computer or
    computer_use_preview, outputs as computer_screenshot, acknowledged_safety_checks)."""

    paths = ("/v1/responses",)

    def __init__(self, key: str, flavor: str):
        super().__init__(key)
        self.flavor = flavor

    @property
    def base_url(self) -> str:
        """What the SDK's base_url must be: Lightcone's paths carry /v1, OpenAI's base carries it."""
        return self.url if self.flavor == "lightcone" else f"{self.url}/v1"

    # -- checks -----------------------------------------------------------------------------------------------
    def check(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        assert headers.get("authorization") == f"Bearer {self.key}", f"auth header {headers.get('authorization')!r}"
        allowed = TOP_LEVEL | ({"text"} if self.flavor == "openai" else set())  # Lightcone documents no text.format
        assert set(body) <= allowed, f"unexpected fields {sorted(set(body) - allowed)}"
        if "text" in body:  # OpenAI structured outputs: text.format of type json_schema, whose root is an object
            fmt = body["text"].get("format") if isinstance(body["text"], dict) else None
            assert isinstance(fmt, dict) and set(fmt) <= {"type", "name", "schema", "strict", "description"}, fmt
            assert fmt.get("type") == "json_schema" and isinstance(fmt.get("name"), str) and fmt["name"], fmt
            assert isinstance(fmt.get("schema"), dict) and fmt["schema"].get("type") == "object", fmt
            assert isinstance(fmt.get("strict", False), bool), fmt
        assert isinstance(body.get("model"), str) and body["model"], "model must be a non-empty string"
        if "temperature" in body:
            assert isinstance(body["temperature"], int | float) and 0 <= body["temperature"] <= 2
        if "instructions" in body:
            assert isinstance(body["instructions"], str)
        if "previous_response_id" in body:
            assert isinstance(body["previous_response_id"], str) and body["previous_response_id"].startswith("resp_")
        tools = body.get("tools")
        assert isinstance(tools, list) and len(tools) == 1, f"tools must be one computer tool, got {tools!r}"
        self._check_tool(tools[0], body)
        items = body.get("input")
        assert isinstance(items, list) and items, "input must be a non-empty list"
        for item in items:
            self._check_item(item)
        if "previous_response_id" not in body:
            assert any(i.get("role") == "user" for i in items), "the first request needs a user message"

    def _check_tool(self, tool: dict[str, Any], body: dict[str, Any]) -> None:
        if self.flavor == "lightcone":
            assert set(tool) == {"type", "display_width", "display_height", "environment"}, tool
            assert tool["type"] == "computer_use" and tool["environment"] in ("browser", "desktop"), tool
            assert all(isinstance(tool[k], int) and tool[k] > 0 for k in ("display_width", "display_height"))
            assert "truncation" not in body
        elif tool.get("type") == "computer_use_preview":
            assert set(tool) == {"type", "display_width", "display_height", "environment"}, tool
            assert tool["environment"] in ("browser", "linux", "mac", "windows", "ubuntu"), tool
            assert body.get("truncation") == "auto", "computer_use_preview needs truncation=auto"
        else:
            assert tool == {"type": "computer"}, f"GA computer tool must be {{'type': 'computer'}}, got {tool}"
            assert "truncation" not in body

    def _check_item(self, item: Any) -> None:
        assert isinstance(item, dict), f"input item {item!r}"
        kind = item.get("type")
        if kind == "computer_call_output":
            allowed = {"type", "call_id", "output", "acknowledged_safety_checks"}
            assert set(item) <= allowed and isinstance(item.get("call_id"), str), item.keys()
            output = item["output"]
            if self.flavor == "lightcone":
                assert set(output) == {"type", "image_url", "detail"} and output["type"] == "input_image", output
            else:
                assert set(output) == {"type", "image_url"} and output["type"] == "computer_screenshot", output
            check_data_url(output["image_url"])
            for check in item.get("acknowledged_safety_checks", []):
                assert set(check) <= {"id", "code", "message"} and isinstance(check.get("id"), str), check
        elif kind == "function_call_output":
            assert set(item) == {"type", "call_id", "output"} and isinstance(item["output"], str), item
        else:
            assert set(item) <= {"role", "content", "type"} and item.get("type", "message") == "message", item
            assert item.get("role") in ("user", "assistant", "system", "developer"), item
            content = item.get("content")
            if isinstance(content, str):
                return
            assert isinstance(content, list) and content, f"message content {content!r}"
            for part in content:
                if part.get("type") == "input_text":
                    assert set(part) == {"type", "text"} and isinstance(part["text"], str), part
                else:
                    assert part.get("type") == "input_image" and set(part) <= {"type", "image_url", "detail"}, part
                    check_data_url(part["image_url"])

    # -- session routing --------------------------------------------------------------------------------------
    def first_text(self, body: dict[str, Any]) -> str:
        """Every user text of the request (the task's key is in the instruction, after any context turns)."""
        return " ".join(user_texts(body)) if isinstance(body.get("input"), list) else ""

    def previous_id(self, body: dict[str, Any]) -> str | None:
        return body.get("previous_response_id")

    # -- answers ----------------------------------------------------------------------------------------------
    def response(self, session: Session, output: list[dict[str, Any]], usage: tuple[int, int] = (100, 20),
                 model: str = "fake") -> dict[str, Any]:
        rid = self.new_id("resp")
        self.remember(rid, session)
        session.data["last_id"] = rid
        return {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": model, "output": output,
                "usage": {"input_tokens": usage[0], "output_tokens": usage[1], "total_tokens": sum(usage)}}

    def computer_call(self, session: Session, action: dict[str, Any] | None = None,
                      actions: list[dict[str, Any]] | None = None,
                      checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        call_id = self.new_id("call")
        session.data["last_call"] = call_id
        item: dict[str, Any] = {"type": "computer_call", "id": self.new_id("cu"), "call_id": call_id,
                                "status": "completed", "pending_safety_checks": checks or []}
        if actions is not None:
            item["actions"] = actions
        else:
            item["action"] = action
        return item

    @staticmethod
    def message(text: str) -> dict[str, Any]:
        return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}


# --- reading requests in tests -----------------------------------------------------------------------------------
def call_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in body["input"] if i.get("type") == "computer_call_output"]


def user_texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for item in body["input"]:
        if isinstance(item, dict) and item.get("role") == "user":
            content = item["content"]
            texts += [content] if isinstance(content, str) else [p["text"] for p in content
                                                                  if p.get("type") == "input_text"]
    return texts


def first_image(body: dict[str, Any]) -> tuple[int, int]:
    """Size of the screenshot this request carries (a call output's, else the user message's)."""
    for item in body["input"]:
        if item.get("type") == "computer_call_output":
            return check_data_url(item["output"]["image_url"])
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "input_image":
                return check_data_url(part["image_url"])
    raise AssertionError("no screenshot in the request")
