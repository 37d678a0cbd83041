"""Northstar (``tzafon.*`` models) through the Lightcone Responses API, with the official ``tzafon`` SDK.

Wire format: PROVIDERS.md section 1. ``POST {base}/v1/responses`` (base: the entry's ``base_url``, else
``LIGHTCONE_BASE_URL``, else ``https://api.tzafon.ai``), key ``TZAFON_API_KEY``. The tool is
``{"type": "computer_use", "display_width", "display_height", "environment": "browser" | "desktop"}`` (the task's
``kind``); screenshots go back as ``computer_call_output`` items whose ``output`` is an ``input_image``.
Coordinates are normalized 0-999 by default (``px = int(v / 1000 * viewport)``), or screenshot pixels with the
entry's ``"coordinates": "pixels"`` (an older doc says pixels). Continuation: ``previous_response_id``.

Action mapping (Northstar -> ``worker.computer.Action``; the table is ``responses_api.responses_actions``, shared
with OpenAI, with Northstar's scroll clamp and default wait):

=====================================  ======================================================================
Northstar                              Lodestar
=====================================  ======================================================================
click{x,y,button}                      click (left), right_click (right); middle/wheel: failed step;
                                       back/forward: key Alt+ArrowLeft / Alt+ArrowRight (browser history)
double_click / triple_click            double_click / triple_click
right_click                            right_click
drag{path} / drag{x,y,end_x,end_y}     drag from the first to the last point (intermediate points dropped)
keypress{keys} / key{keys|key}         key (one chord; "ctrl+c" or ["ctrl", "c"])
move{x,y}                              move
scroll{x,y,scroll_x,scroll_y}          scroll by the pixel deltas, each clamped to +-500
hscroll{x,y,scroll_x|amount}           scroll horizontally (clamped to +-500)
type{text,x?,y?} / point_and_type      click at x,y first when given, then type
wait{ms} / wait{seconds|duration}      wait (1 s when no duration, or 0, is given; at most 60 s)
screenshot                             nothing (every step sends a fresh screenshot)
mouse_down / mouse_up                  move to the press point; the release becomes one drag (or a click)
key_down / key_up                      failed step: held keys are not supported (the model is told why)
navigate{url}                          navigate (browser tasks; a failed step on the desktop)
terminate{status} / done / answer      done with the result, or fail when status is failure
function_call done|terminate|answer    the same terminal actions; other functions: failed step
click/... with held ``keys``           failed step (modifiers on pointer actions are not supported)
no computer_call in the answer         done, with the answer's text as the result
pending_safety_checks                  task paused with the checks as the question (or auto-approved by
                                       ``LODESTAR_AUTO_APPROVE_SAFETY_CHECKS``); acknowledged in the next output
unknown action type                    failed step naming the type (raw JSON is parsed, so it is seen)
=====================================  ======================================================================

A task's ``output_schema`` is asked for in the first user message (``shared.output_schema.answer_prompt``: the
Lightcone API documents no structured output); the answer is a terminal action's ``result`` (JSON text or an
object) or the final message's text, validated by the loop.
"""

from __future__ import annotations

from typing import Any, ClassVar

import tzafon

from worker.providers.actions import ActionMap
from worker.providers.responses_api import ResponsesPolicy, responses_actions
from worker.providers.screen import Frame


class NorthstarPolicy(ResponsesPolicy):
    """A Policy driven by a Northstar model (``tzafon.northstar-cua-fast`` ...) through ``tzafon.Lightcone``.

    Raises ``PolicyError`` from ``decide`` when the call fails after the SDK's retries (``tzafon.APIError``)."""

    provider = "northstar"
    sdk_error = tzafon.LightconeError
    http_client = tzafon.DefaultHttpxClient
    actions: ClassVar[dict[str, ActionMap[dict[str, Any]]]] = responses_actions(scroll_limit=500, default_wait=1.0)
    """The Responses API table with Northstar's scroll clamp (+-500 px) and ``wait`` (1 s)."""

    def _make_client(self) -> Any:
        return tzafon.Lightcone(**self._client_options())

    def _tool(self, frame: Frame) -> dict[str, Any]:
        return {"type": "computer_use", "display_width": frame.width, "display_height": frame.height,
                "environment": "browser" if self.kind == "browser" else "desktop"}

    def _screenshot_output(self, frame: Frame) -> dict[str, Any]:
        return {"type": "input_image", "image_url": frame.data_url(), "detail": "auto"}
