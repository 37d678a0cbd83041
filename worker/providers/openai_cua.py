"""OpenAI computer use through the Responses API, with the official ``openai`` SDK.

Wire format: PROVIDERS.md section 2. ``POST {base}/responses`` (base: the entry's ``base_url``, else
``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``), key ``OPENAI_API_KEY``. Two tools:

- GA ``{"type": "computer"}`` (``openai/<model>``): a ``computer_call`` carries a batch ``actions: [...]``, run in
  order within one step (a failing action stops the batch).
- Preview ``{"type": "computer_use_preview", "display_width", "display_height", "environment": "browser" |
  "linux"}`` (``openai/computer-use-preview``), sent with ``truncation: "auto"``; one ``action`` per call.

The task's ``temperature`` is sent to ``computer-use-preview`` but not to GA models (GPT-5 family: they refuse a
non-default temperature with 400); an entry's ``send_temperature`` overrides either way.

Coordinates are pixels of the screenshot sent (the viewport size unless the entry sets ``max_pixels`` /
``max_long_edge``). Screenshots go back as ``computer_call_output`` with ``output: {"type": "computer_screenshot",
"image_url": "data:image/jpeg;base64,..."}`` and ``acknowledged_safety_checks`` once the user (or
``LODESTAR_AUTO_APPROVE_SAFETY_CHECKS``) approved them. Continuation: ``previous_response_id``.

Action mapping (OpenAI -> ``worker.computer.Action``; the table is ``responses_api.responses_actions``, shared
with Northstar, with OpenAI's scroll clamp and default wait):

=====================================  ======================================================================
OpenAI                                 Lodestar
=====================================  ======================================================================
click{x,y,button: left|right}          click / right_click
click{button: back|forward}            key Alt+ArrowLeft / Alt+ArrowRight (the browser's history shortcut)
click{button: wheel}                   failed step: middle clicks are not supported
click/double_click/... with ``keys``   failed step: modifiers held during pointer actions are not supported
double_click{x,y}                      double_click
drag{path: [{x,y}...]}                 drag from the first to the last point (intermediate points dropped)
keypress{keys: [...]}                  key, one chord ("CTRL"+"A" -> Control+a)
move{x,y}                              move
scroll{x,y,scroll_x,scroll_y}          scroll by the pixel deltas (clamped to +-2000)
type{text}                             type
wait                                   wait 2 s (no duration on the wire; the usual convention)
screenshot                             nothing (every step sends a fresh screenshot)
Northstar's other types                as in ``northstar.py`` (one table serves both providers):
                                       triple_click, right_click, hscroll, point_and_type, mouse_down /
                                       mouse_up, key_down / key_up, navigate, terminate / done / answer, key
no computer_call in the answer         done, with the final ``message`` text as the result
pending_safety_checks [{id,code,msg}]  the task pauses with the messages as the question; resume or a message
                                       approves, and the checks go back as ``acknowledged_safety_checks``
unknown action type                    failed step naming the type (raw JSON is parsed, so it is seen)
=====================================  ======================================================================
OpenAI reports no failure of its own: a model that gives up ends with a message, i.e. done with that text.

A task's ``output_schema`` goes as ``text: {"format": {"type": "json_schema", "name": "final_answer", "schema",
"strict": false}}`` on every request (a schema whose root is not an object is wrapped in ``{"answer": ...}`` and
unwrapped from the answer: ``shared.output_schema.object_schema``); the final message's text is the JSON answer.
"""

from __future__ import annotations

from typing import Any

import openai

from shared.output_schema import object_schema, parse_answer, unwrap
from worker.computer import Action
from worker.providers.actions import answer
from worker.providers.responses_api import ResponsesPolicy
from worker.providers.screen import Frame


class OpenAIComputerPolicy(ResponsesPolicy):
    """A Policy driven by an OpenAI computer-use model through ``openai.OpenAI`` (``spec.tool``: computer |
    computer_use_preview). Raises ``PolicyError`` from ``decide`` when the call fails after the SDK's retries."""

    provider = "openai"
    sdk_error = openai.OpenAIError
    native_output = True
    http_client = openai.DefaultHttpxClient

    def _make_client(self) -> Any:
        return openai.OpenAI(**self._client_options())

    @property
    def preview(self) -> bool:
        return self.spec.tool == "computer_use_preview"

    def _tool(self, frame: Frame) -> dict[str, Any]:
        if not self.preview:
            return {"type": "computer"}
        return {"type": "computer_use_preview", "display_width": frame.width, "display_height": frame.height,
                "environment": "browser" if self.kind == "browser" else "linux"}

    def _extra(self, body: dict[str, Any]) -> None:
        if self.preview:
            body["truncation"] = "auto"
        if self.output_schema is not None:
            schema, _ = object_schema(self.output_schema)
            body["text"] = {"format": {"type": "json_schema", "name": "final_answer", "schema": schema,
                                       "strict": False}}

    def _final(self, text: str | None) -> Action:
        """The final message's JSON (unwrapped when the schema was wrapped); its text when it is not JSON (the
        loop then reports that, and the model answers again)."""
        if self.output_schema is None:
            return super()._final(text)
        try:
            value = parse_answer(text)
        except ValueError:
            return super()._final(text)
        return answer(unwrap(value, object_schema(self.output_schema)[1]))

    def _screenshot_output(self, frame: Frame) -> dict[str, Any]:
        return {"type": "computer_screenshot", "image_url": frame.data_url()}
