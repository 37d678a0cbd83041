"""Model providers against local fakes that speak each provider's JSON (``tests/fakes``), through the official SDKs.

Three layers:

- parsers, the action tables and the registry, with no network (UI-TARS box syntaxes and coordinate spaces, Qwen
  tool calls; every documented action type of each provider has a table entry and each entry is in its module's
  docstring table; an unknown type is a failed step naming it; example rows of each mapping);
- each adapter running a real multi-step task in real Chromium on ``tests/pages/form.html`` (the loop in-process,
  a stub control channel): the form gets filled (the site's ``/__submitted`` hit), clicks land where the page's
  elements are at a non-default viewport, continuation ids, injected messages, retries and errors;
- end to end through the API (gunicorn + Celery worker on Redis database 11): each provider's model submitted,
  steps, usage and cost on GET /agent/tasks/{id}, a safety check pausing the task until resumed, a ``call_user``
  answered by an injected message, exit code 7 with the provider's message, 422 for an unknown model.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pytest
from PIL import Image

from shared.control import ControlState
from shared.models import ModelRegistry
from shared.settings import Settings, load_settings
from shared.states import ExitCode
from tests.conftest import LiveStack, Site, chromium_available, need, start_stack
from tests.fakes.anthropic import FakeAnthropic, images_in, last_user_blocks
from tests.fakes.chat import FakeChat, last_user
from tests.fakes.chat import images_in as chat_images
from tests.fakes.responses import FakeResponses, call_outputs, first_image, user_texts
from tests.fakes.server import Session, Turn, check_data_url
from worker.agents import make_policy
from worker.computer import Observation
from worker.loop import MAX_FAILED_STEPS, Outcome, run_episode
from worker.policy import Episode, StepRecord
from worker.providers import adapter_for, anthropic_cua, northstar, openai_cua, qwen, ui_tars
from worker.providers.actions import COORDINATE_ACTIONS, ActionBuilder
from worker.providers.answers import AnswerError
from worker.providers.base import ModelPolicy
from worker.providers.qwen import QWEN_ACTIONS, QwenAnswer, map_qwen, parse_qwen, qwen_tool
from worker.providers.screen import Frame, Screen
from worker.providers.ui_tars import (
    UI_TARS_ACTIONS,
    UI_TARS_PROMPT,
    UITarsAnswer,
    UITarsCall,
    map_ui_tars,
    parse_ui_tars,
)

KEYS = {"lightcone": "tz-test-key", "openai": "sk-test-key", "anthropic": "ant-test-key", "chat": "vllm-test-key"}
PRICES = {"tzafon.*": [1.0, 4.0], "openai/*": [3.0, 12.0], "anthropic/*": [3.0, 15.0], "openai-compat/*": [0.1, 0.2]}
NORTHSTAR, OPENAI_GA, OPENAI_PREVIEW = "tzafon.northstar-cua-fast", "openai/gpt-5.4", "openai/computer-use-preview"
CLAUDE, CLAUDE_ZOOM = "anthropic/claude-haiku-4-5", "anthropic/claude-sonnet-4-6"
UI_TARS, QWEN3, QWEN25 = "openai-compat/ui-tars-1.5-7b", "openai-compat/qwen3-vl-8b", "openai-compat/qwen2.5-vl-7b"


# --- fixtures --------------------------------------------------------------------------------------------------------
@dataclass
class Fakes:
    lightcone: FakeResponses
    openai: FakeResponses
    anthropic: FakeAnthropic
    chat: FakeChat

    def models(self) -> dict[str, dict[str, Any]]:
        """LODESTAR_MODELS naming every fake explicitly (the in-process runs read no SDK env var)."""
        chat = {"base_url": self.chat.base_url, "api_key": KEYS["chat"]}
        return {
            NORTHSTAR: {"base_url": self.lightcone.base_url, "api_key": KEYS["lightcone"]},
            "openai/*": {"base_url": self.openai.base_url, "api_key": KEYS["openai"]},
            "anthropic/*": {"base_url": self.anthropic.url, "api_key": KEYS["anthropic"]},
            UI_TARS: chat, QWEN3: chat, QWEN25: chat,
        }


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    f = Fakes(FakeResponses(KEYS["lightcone"], "lightcone"), FakeResponses(KEYS["openai"], "openai"),
              FakeAnthropic(KEYS["anthropic"]), FakeChat(KEYS["chat"]))
    yield f
    for server in (f.lightcone, f.openai, f.anthropic, f.chat):
        server.close()


@dataclass
class Layout:
    """Where form.html's elements are at one viewport (CSS pixels, centres)."""

    width: int
    height: int
    name: tuple[float, float]
    submit: tuple[float, float]


@pytest.fixture(scope="module")
def browsers(site: Site) -> Iterator[Any]:
    need(chromium_available(), "Chromium is not installed (apt-get install chromium)")
    from worker.browser import BrowserHost

    host = BrowserHost(load_settings(env={}, browser_allowed_hosts=(urllib.parse.urlsplit(site.base).netloc,)))
    yield host
    host.close()


@pytest.fixture(scope="module")
def layout(browsers: Any, site: Site) -> Callable[[int, int], Layout]:
    cache: dict[tuple[int, int], Layout] = {}

    def at(width: int, height: int) -> Layout:
        if (width, height) not in cache:
            computer = browsers.open(width, height)
            computer.navigate(site.url("form.html"))
            boxes = [computer.page.locator(s).bounding_box() for s in ("#name", "button")]
            computer.close()
            centre = [(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for b in boxes]
            cache[(width, height)] = Layout(width, height, centre[0], centre[1])
        return cache[(width, height)]

    return at


def provider_settings(fakes: Fakes, site: Site, **overrides: Any) -> Settings:
    return load_settings(env={}, browser_allowed_hosts=(urllib.parse.urlsplit(site.base).netloc,),
                         models=json.dumps(fakes.models()), model_prices=json.dumps(PRICES), model_timeout=10.0,
                         **overrides)


class StubControl:
    """The loop's view of the control channel, in memory: ``messages_at[n]`` is delivered at step n."""

    def __init__(self, messages_at: dict[int, list[str]] | None = None):
        self.state = ControlState()
        self.messages_at = messages_at or {}
        self.taken = 0

    def poll(self) -> ControlState:
        return self.state

    def refresh(self) -> ControlState:
        return self.state

    def wait_while_paused(self, deadline: float) -> ControlState:
        return self.state

    def take_messages(self) -> list[str]:
        self.taken += 1
        return self.messages_at.get(self.taken, [])


def run_task(browsers: Any, site: Site, settings: Settings, model: str, instruction: str,
             viewport: tuple[int, int], messages_at: dict[int, list[str]] | None = None, submits: bool = False,
             **episode_fields: Any) -> tuple[Outcome, list[StepRecord]]:
    """Run one task in-process: a fresh browser context on form.html, the adapter for ``model``, the real loop.

    ``submits``: the task ends right after the form's Submit, whose ``fetch`` to the site may still be in flight
    (closing the context cuts it, as a task's end does): the context stays open until the site has seen it (bounded
    by ``Site.wait_for_hit``), so the test's check of the page's effect does not race the close."""
    episode = Episode(task_id="task_test", instruction=instruction, model=model, max_steps=10, **episode_fields)
    policy = make_policy(None, episode, settings=settings)
    computer = browsers.open(*viewport)
    steps: list[StepRecord] = []
    try:
        computer.navigate(site.url("form.html"))
        outcome = run_episode(computer, policy, episode, StubControl(messages_at),  # type: ignore[arg-type]
                              lambda record, _obs: steps.append(record) is None, time.monotonic() + 60)
        if submits and outcome.code == ExitCode.COMPLETED:
            site.wait_for_hit(timeout=60)
    finally:
        computer.close()
    return outcome, steps


def landed(step: StepRecord, point: tuple[float, float]) -> bool:
    """The step's first action was performed within a pixel of ``point`` (viewport CSS pixels)."""
    result = step.results[0]
    return result.ok and abs(result.x - point[0]) <= 1.5 and abs(result.y - point[1]) <= 1.5  # type: ignore[operator]


def scaled(point: tuple[float, float], sent: tuple[int, int], layout: Layout) -> list[int]:
    """A viewport point in pixels of the screenshot the model was sent."""
    return [round(point[0] * sent[0] / layout.width), round(point[1] * sent[1] / layout.height)]


def per_mille(point: tuple[float, float], layout: Layout) -> list[int]:
    return [round(point[0] / layout.width * 1000), round(point[1] / layout.height * 1000)]


def no_errors(*sessions: Session) -> None:
    for session in sessions:
        assert session.errors == [], session.errors


# --- scripts that fill the form --------------------------------------------------------------------------------
Check = Callable[[dict[str, Any], Session], None]


def _checked(check: Check | None, reply: Callable[[dict[str, Any], Session], Any]) -> Turn:
    def turn(body: dict[str, Any], session: Session) -> Any:
        if check is not None:
            check(body, session)
        return reply(body, session)
    return turn


def responses_form(fake: FakeResponses, lay: Layout, name: str, normalized: bool, batch: bool = False,
                   checks: dict[int, Check] | None = None, usage: tuple[int, int] = (100, 20)) -> list[Turn]:
    """Click Name, type ``name``, click Submit, finish: Northstar ends with ``answer``, OpenAI with a message.
    ``batch``: the three actions in one GA ``computer_call``."""
    checks = checks or {}

    def point(p: tuple[float, float], body: dict[str, Any]) -> list[int]:
        return per_mille(p, lay) if normalized else scaled(p, first_image(body), lay)

    def call(action: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any], Session], Any]:
        return lambda body, s: fake.response(s, [fake.computer_call(s, action(body))], usage)

    def click(p: tuple[float, float]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda body: {"type": "click", "button": "left", **dict(zip("xy", point(p, body)))}

    finish = (lambda body, s: fake.response(s, [fake.computer_call(s, {"type": "answer", "result": "signed up"})],
                                            usage)) if normalized else \
        (lambda body, s: fake.response(s, [fake.message("Signed up.")], usage))
    if batch:
        replies = [lambda body, s: fake.response(s, [fake.computer_call(s, actions=[
            click(lay.name)(body), {"type": "type", "text": name}, click(lay.submit)(body)])], usage), finish]
    else:
        replies = [call(click(lay.name)), call(lambda body: {"type": "type", "text": name}), call(click(lay.submit)),
                   finish]
    return [_checked(checks.get(i + 1), r) for i, r in enumerate(replies)]


def anthropic_form(fake: FakeAnthropic, lay: Layout, name: str, checks: dict[int, Check] | None = None,
                   usage: tuple[int, int] = (1000, 50)) -> list[Turn]:
    """Click Name; type and click Submit (two tool_use blocks in one answer); end_turn."""
    checks = checks or {}

    def sent(body: dict[str, Any]) -> tuple[int, int]:
        return images_in(body)[-1]

    replies = [
        lambda body, s: fake.message([{"type": "text", "text": "I will click the Name field."},
                                      fake.tool_use(s, "left_click", coordinate=scaled(lay.name, sent(body), lay))],
                                     usage=usage),
        lambda body, s: fake.message([fake.tool_use(s, "type", text=name),
                                      fake.tool_use(s, "left_click", coordinate=scaled(lay.submit, sent(body), lay))],
                                     usage=usage),
        lambda body, s: fake.message([{"type": "text", "text": "Signed up."}], usage=usage),
    ]
    return [_checked(checks.get(i + 1), r) for i, r in enumerate(replies)]


def ui_tars_form(fake: FakeChat, lay: Layout, name: str, checks: dict[int, Check] | None = None,
                 usage: tuple[int, int] = (300, 30)) -> list[Turn]:
    """UI-TARS 1.5 in smart-resized pixels, two box syntaxes: click Name, type, click Submit, finished."""
    checks = checks or {}

    def sent(body: dict[str, Any]) -> tuple[int, int]:
        return chat_images(body)[-1]

    def box(p: tuple[float, float], body: dict[str, Any]) -> str:
        return "({},{})".format(*scaled(p, sent(body), lay))

    def point(p: tuple[float, float], body: dict[str, Any]) -> str:
        return "<point>{} {}</point>".format(*scaled(p, sent(body), lay))

    replies = [
        lambda body, s: fake.completion("Thought: The Name field is empty; click it.\n"
                                        f"Action: click(start_box='<|box_start|>{box(lay.name, body)}<|box_end|>')",
                                        usage=usage),
        lambda body, s: fake.completion(f"Thought: Type the name.\nAction: type(content='{name}')", usage=usage),
        lambda body, s: fake.completion(f"Thought: Submit.\nAction: click(point='{point(lay.submit, body)}')",
                                        usage=usage),
        lambda body, s: fake.completion("Thought: Done.\nAction: finished(content='signed up')", usage=usage),
    ]
    return [_checked(checks.get(i + 1), r) for i, r in enumerate(replies)]


def qwen_form(fake: FakeChat, lay: Layout, name: str, normalized: bool, checks: dict[int, Check] | None = None,
              usage: tuple[int, int] = (300, 30)) -> list[Turn]:
    """Qwen: a ``tool_calls`` click, a ``<tool_call>`` text block to type, a click, terminate."""
    checks = checks or {}

    def coord(p: tuple[float, float], body: dict[str, Any]) -> list[int]:
        return per_mille(p, lay) if normalized else scaled(p, chat_images(body)[-1], lay)

    typed = json.dumps({"name": "computer_use", "arguments": {"action": "type", "text": name}})
    replies = [
        lambda body, s: fake.completion("", [{"action": "left_click", "coordinate": coord(lay.name, body)}],
                                        usage=usage),
        lambda body, s: fake.completion(f"Typing the name.\n<tool_call>\n{typed}\n</tool_call>", usage=usage),
        lambda body, s: fake.completion(None, [{"action": "left_click", "coordinate": coord(lay.submit, body)}],
                                        usage=usage),
        lambda body, s: fake.completion(None, [{"action": "terminate", "status": "success"}], usage=usage),
    ]
    return [_checked(checks.get(i + 1), r) for i, r in enumerate(replies)]


# === 1. parsers and registry (no network) ============================================================================
def _frame(viewport: tuple[int, int], sent: tuple[int, int]) -> Frame:
    return Frame(b"", "image/jpeg", sent[0], sent[1], viewport[0], viewport[1], b"")


def _builder(coordinates: str, viewport: tuple[int, int], sent: tuple[int, int]) -> ActionBuilder:
    spec = ModelRegistry().resolve(NORTHSTAR)
    assert spec is not None
    from dataclasses import replace

    builder = ActionBuilder(Screen(replace(spec, coordinates=coordinates)))
    builder.frame = _frame(viewport, sent)
    return builder


@pytest.mark.parametrize(("answer", "point"), [
    ("Thought: Click the box.\nAction: click(start_box='(120,340)')", (120, 340)),
    ("Thought: Click it.\nAction: click(start_box='<|box_start|>(120,340)<|box_end|>')", (120, 340)),
    ("Action: click(point='<point>120 340</point>')", (120, 340)),
    ("Action: click(start_box='<|box_start|>(100,300,140,380)<|box_end|>')", (120, 340)),
], ids=["parentheses", "box-tokens", "point-tag", "four-number-box"])
def test_ui_tars_parser_reads_every_box_syntax(answer: str, point: tuple[int, int]) -> None:
    parsed = parse_ui_tars(answer)
    assert [c.name for c in parsed.calls] == ["click"]
    assert parsed.calls[0].start == point
    assert parsed.thought == ("" if answer.startswith("Action") else answer.split("\n")[0].removeprefix("Thought: "))


def test_ui_tars_parser_reads_drag_hotkey_scroll_escapes_and_several_calls() -> None:
    parsed = parse_ui_tars(
        "Thought: several things\nAction: drag(start_box='(10,20)', end_box='(30,40)')\n\n"
        "hotkey(key='ctrl c')\n\ntype(content='it\\'s done\\n')\n\nscroll(start_box='(5,6)', direction='up')\n\n"
        "type(content='quote ' inside')")
    names = [c.name for c in parsed.calls]
    assert names == ["drag", "hotkey", "type", "scroll", "type"]
    assert (parsed.calls[0].start, parsed.calls[0].end) == ((10, 20), (30, 40))
    assert parsed.calls[1].args == {"key": "ctrl c"}
    assert parsed.calls[2].args == {"content": "it's done\n"}
    assert parsed.calls[3].args["direction"] == "up"
    assert parsed.calls[4].args == {"content": "quote ' inside"}
    for bad in ("Thought: no action here", "Action: click(start_box='(1,2)'", "Action: click(start_box='(5)')"):
        with pytest.raises(AnswerError):
            parse_ui_tars(bad)


def test_ui_tars_coordinates_map_from_both_spaces_to_the_viewport() -> None:
    answer = parse_ui_tars("Action: click(start_box='(500,250)')\n\ntype(content='hi\\n')\n\nfinished(content='ok')")
    # UI-TARS 1.0: relative 0-1000 of whatever image was sent
    relative = map_ui_tars(answer, _builder("normalized", (1600, 900), (1429, 804)))
    assert [(a.type, a.x, a.y) for a in relative.actions[:1]] == [("click", 800, 225)]
    # UI-TARS 1.5: pixels of the smart-resized image (1008x700 for a 1000x700 viewport)
    resized = map_ui_tars(answer, _builder("smart-resize", (1000, 700), (1008, 700)))
    assert (resized.actions[0].x, resized.actions[0].y) == (496, 250)
    assert [a.type for a in resized.actions] == ["click", "type", "key", "done"]
    assert resized.actions[1].text == "hi" and resized.actions[2].keys == "Enter" and resized.actions[3].text == "ok"
    asking = map_ui_tars(parse_ui_tars("Thought: Which plan do you want?\nAction: call_user()"),
                         _builder("normalized", (800, 600), (800, 600)))
    assert asking.actions == [] and asking.ask_user == "Which plan do you want?"
    unknown = map_ui_tars(parse_ui_tars("Action: click(start_box='(1,1)')\n\nlaunch_rocket()"),
                          _builder("normalized", (800, 600), (800, 600)))
    assert [a.type for a in unknown.actions] == ["click"] and "launch_rocket" in (unknown.error or "")


def test_smart_resize_matches_qwen() -> None:
    from worker.providers.screen import smart_resize

    assert smart_resize(700, 1000) == (700, 1008)
    assert smart_resize(720, 1280) == (728, 1288)
    h, w = smart_resize(2160, 3840, max_pixels=1280 * 28 * 28)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 1280 * 28 * 28 and abs(w / h - 16 / 9) < 0.05


def test_qwen_parser_reads_tool_calls_and_tool_call_blocks() -> None:
    from_tool_calls = parse_qwen({"content": "I will click.", "tool_calls": [{"type": "function", "function": {
        "name": "computer_use", "arguments": json.dumps({"action": "left_click", "coordinate": [500, 500]})}}]})
    assert from_tool_calls.thought == "I will click." and from_tool_calls.calls == [
        {"action": "left_click", "coordinate": [500, 500]}]
    from_text = parse_qwen({"content": 'Type then press.\n<tool_call>\n{"name": "computer_use", "arguments": '
                                       '{"action": "type", "text": "hello"}}\n</tool_call>\n<tool_call>\n'
                                       '{"name": "computer_use", "arguments": {"action": "key", "keys": ["ctrl", '
                                       '"a"]}}\n</tool_call>'})
    assert from_text.thought == "Type then press." and [c["action"] for c in from_text.calls] == ["type", "key"]
    decision = map_qwen(from_text, _builder("normalized", (1000, 700), (1000, 700)))
    assert [(a.type, a.text or a.keys) for a in decision.actions] == [("type", "hello"), ("key", "ctrl+a")]
    relative = map_qwen(from_tool_calls, _builder("normalized", (1000, 700), (1000, 700)))
    assert (relative.actions[0].x, relative.actions[0].y) == (500, 350)
    pixels = map_qwen(from_tool_calls, _builder("smart-resize", (1000, 700), (1008, 700)))
    assert (pixels.actions[0].x, pixels.actions[0].y) == (496, 500)
    scrolls = map_qwen(parse_qwen({"content": '<tool_call>{"name": "computer_use", "arguments": {"action": "scroll",'
                                              ' "pixels": -5}}</tool_call>'}), _builder("normalized", (800, 600),
                                                                                          (800, 600)))
    assert (scrolls.actions[0].type, scrolls.actions[0].dy) == ("scroll", 500)  # -5 notches: down 500 px
    for bad in ({"content": "<tool_call>{not json}</tool_call>"}, {"content": "just text"},
                {"content": '<tool_call>{"name": "browser", "arguments": {"action": "x"}}</tool_call>'},
                {"content": None, "tool_calls": [{"function": {"name": "computer_use", "arguments": "{"}}]}):
        with pytest.raises(AnswerError):
            parse_qwen(bad)


def test_registry_knows_the_built_in_names_and_operator_entries() -> None:
    plain = ModelRegistry()
    assert plain.resolve("tzafon.northstar-cua-fast").provider == "northstar"  # type: ignore[union-attr]
    preview = plain.resolve(OPENAI_PREVIEW)
    assert preview is not None and (preview.tool, preview.model) == ("computer_use_preview", "computer-use-preview")
    assert plain.resolve("openai/gpt-5.4").tool == "computer"  # type: ignore[union-attr]
    claude = plain.resolve(CLAUDE)
    assert claude is not None and (claude.model, claude.max_pixels, claude.tool) == (
        "claude-haiku-4-5", 1_150_000, "computer_20250124")
    assert plain.resolve(CLAUDE_ZOOM).tool == "computer_20251124"  # type: ignore[union-attr]
    assert plain.resolve("anthropic/claude-opus-5").tool == "computer_20251124"  # type: ignore[union-attr]
    assert plain.resolve(CLAUDE).send_temperature is False  # type: ignore[union-attr]
    for unknown in ("gpt-4o", "openai-compat/ui-tars-1.5-7b", "", "anthropic/"):
        assert plain.resolve(unknown) is None, unknown
    custom = ModelRegistry(json.dumps({
        "openai-compat/ui-tars-1.5-7b": {"base_url": "http://gpu:8000/v1", "api_key_env": "VLLM_KEY"},
        "openai-compat/*": {"base_url": "http://gpu:9000/v1"},
        "tzafon.northstar-cua-fast": {"coordinates": "pixels"},
        "house-model": {"provider": "anthropic", "model": "claude-haiku-4-5"},
    }), json.dumps({"openai-compat/*": {"input": 0.5, "output": 1.0}}))
    tars = custom.resolve("openai-compat/ui-tars-1.5-7b")
    assert tars is not None and (tars.dialect, tars.coordinates, tars.base_url) == (
        "ui-tars", "smart-resize", "http://gpu:8000/v1")
    assert tars.cost_usd(1_000_000, 2_000_000) == 2.5
    qwen3 = custom.resolve("openai-compat/qwen3-vl-30b")
    assert qwen3 is not None and (qwen3.dialect, qwen3.coordinates, qwen3.base_url) == (
        "qwen", "normalized", "http://gpu:9000/v1")
    assert custom.resolve(NORTHSTAR).coordinates == "pixels"  # type: ignore[union-attr]
    assert custom.resolve("house-model").model == "claude-haiku-4-5"  # type: ignore[union-attr]
    assert custom.resolve(NORTHSTAR).cost_usd(10, 10) is None  # type: ignore[union-attr]
    for bad, part in [({"openai-compat/x": {}}, "base_url"), ({"tzafon.x": {"coordinates": "inches"}}, "coordinates"),
                      ({"x": {"model": "y"}}, "provider"), ({"openai/x": {"colour": 1}}, "colour")]:
        with pytest.raises(ValueError, match=part):
            ModelRegistry(json.dumps(bad))


# === 1b. the action tables (no network) =============================================================================
DOCUMENTED = {
    "northstar": {"click", "double_click", "triple_click", "right_click", "drag", "keypress", "key", "move", "scroll",
                  "hscroll", "type", "point_and_type", "wait", "screenshot", "mouse_down", "mouse_up", "key_down",
                  "key_up", "navigate", "terminate", "done", "answer"},
    "openai": {"click", "double_click", "drag", "keypress", "move", "screenshot", "scroll", "type", "wait"},
    "anthropic": {"screenshot", "left_click", "right_click", "middle_click", "double_click", "triple_click",
                  "left_click_drag", "left_mouse_down", "left_mouse_up", "mouse_move", "type", "key", "hold_key",
                  "scroll", "wait", "cursor_position", "zoom"},
    "ui-tars": {"click", "left_double", "right_single", "drag", "hotkey", "type", "scroll", "wait", "finished",
                "call_user"},
    "qwen": {"key", "type", "mouse_move", "left_click", "right_click", "double_click", "left_click_drag", "scroll",
             "wait", "terminate", "answer"},
}
"""Each provider's action types as PROVIDERS.md lists them (its sections 1-4: the providers' documented formats)."""
ANTHROPIC_ANSWERED = {"cursor_position", "zoom"}
"""Anthropic actions that return data in their tool_result: handled in ``AnthropicComputerPolicy._map``, not the
table."""


def _table_and_doc(provider: str) -> tuple[Mapping[str, Any], str]:
    """The provider's action table (Anthropic's with the answered actions) and the docstring section with its
    mapping table."""
    ui_tars_doc, qwen_doc = ui_tars.__doc__ or "", qwen.__doc__ or ""
    return {
        "northstar": (northstar.NorthstarPolicy.actions, northstar.__doc__ or ""),
        "openai": (openai_cua.OpenAIComputerPolicy.actions, openai_cua.__doc__ or ""),
        "anthropic": ({**anthropic_cua.ACTIONS, **dict.fromkeys(ANTHROPIC_ANSWERED)}, anthropic_cua.__doc__ or ""),
        "ui-tars": (UI_TARS_ACTIONS, ui_tars_doc[ui_tars_doc.index("UI-TARS mapping"):]),
        "qwen": (QWEN_ACTIONS, qwen_doc[qwen_doc.index("Qwen-VL mapping"):]),
    }[provider]


@pytest.mark.parametrize("provider", list(DOCUMENTED))
def test_every_documented_action_type_has_a_table_entry_named_in_the_module_docstring(provider: str) -> None:
    table, doc = _table_and_doc(provider)
    assert DOCUMENTED[provider] - set(table) == set()
    undocumented = [name for name in table if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", doc)]
    assert undocumented == [], f"{provider}: table entries missing from the module docstring's table"


def test_the_tables_match_what_the_models_are_told() -> None:
    prompt_actions = re.findall(r"^(\w+)\(", UI_TARS_PROMPT.split("## Action Space")[1], flags=re.M)
    assert len(prompt_actions) == 10 and set(prompt_actions) <= set(UI_TARS_ACTIONS)
    assert set(qwen_tool(1000, 1000)["function"]["parameters"]["properties"]["action"]["enum"]) == set(QWEN_ACTIONS)
    # Qwen's computer_use repeats Anthropic's pointer and typing actions: one shared set of entries
    for name, entry in COORDINATE_ACTIONS.items():
        assert anthropic_cua.ACTIONS[name] is entry and QWEN_ACTIONS[name] is entry
    # Northstar and OpenAI share the Responses API table; they differ in the scroll clamp and the default wait
    assert set(northstar.NorthstarPolicy.actions) == set(openai_cua.OpenAIComputerPolicy.actions)


def _offline(model: str) -> ModelPolicy:
    """The adapter for ``model`` with no client, in screenshot pixels of a 1000x700 viewport sent as it is."""
    spec = ModelRegistry().resolve(model)
    assert spec is not None
    spec = replace(spec, coordinates="pixels", max_pixels=None, max_long_edge=None)
    policy = adapter_for(spec)(spec, Episode(task_id="t", instruction="x", model=model), load_settings(env={}),
                               client=object())
    policy.builder.frame = _frame((1000, 700), (1000, 700))
    return policy


def _decide(provider: str, actions: list[Any]) -> tuple[Any, Any]:
    """Run ``actions`` (the provider's records) through the provider's decision code: ``(Decision, the state that
    answers the calls next turn)``."""
    if provider in ("northstar", "openai"):
        policy: Any = _offline(NORTHSTAR if provider == "northstar" else OPENAI_GA)
        call = {"type": "computer_call", "call_id": "call_1", "actions": actions}
        return policy._parse({"id": "resp_1", "output": [call]}, Episode(task_id="t", instruction="x")), policy.calls
    if provider == "anthropic":
        policy = _offline(CLAUDE)
        uses = [{"type": "tool_use", "id": f"tu_{i}", "name": "computer", "input": a} for i, a in enumerate(actions)]
        return policy._parse({"content": uses, "stop_reason": "tool_use"}, Episode(task_id="t", instruction="x")), \
            policy.pending
    builder = _builder("pixels", (1000, 700), (1000, 700))
    if provider == "ui-tars":
        return map_ui_tars(UITarsAnswer("", [UITarsCall(**a) for a in actions]), builder), None
    return map_qwen(QwenAnswer("", actions), builder), None


UNKNOWN = [
    ("northstar", {"type": "click", "x": 1, "y": 2}, {"type": "juggle", "balls": 3}, "unknown action type 'juggle'"),
    ("openai", {"type": "click", "x": 1, "y": 2}, {"type": "juggle"}, "unknown action type 'juggle'"),
    ("anthropic", {"action": "left_click", "coordinate": [1, 2]}, {"action": "juggle"},
     "unknown computer action 'juggle'"),
    ("anthropic", {"action": "left_click", "coordinate": [1, 2]}, {"action": 5}, "unknown computer action 5"),
    ("ui-tars", {"name": "click", "start": (1, 2)}, {"name": "juggle"}, "unknown UI-TARS action 'juggle'"),
    ("qwen", {"action": "left_click", "coordinate": [1, 2]}, {"action": "juggle"},
     "unknown computer_use action 'juggle'"),
]


@pytest.mark.parametrize(("provider", "first", "unknown", "message"), UNKNOWN,
                         ids=[f"{p}-{u}" for p, _, u, _ in UNKNOWN])
def test_an_unknown_action_type_is_a_failed_step_that_names_it(provider: str, first: dict[str, Any],
                                                                unknown: dict[str, Any], message: str) -> None:
    decision, answered = _decide(provider, [first, unknown, first])
    assert decision.error is not None and decision.error.endswith(message), decision.error
    assert [(a.type, a.x, a.y) for a in decision.actions] == [("click", 1, 2)]  # what came before it still runs
    if provider == "anthropic":  # each tool_use is answered: the unknown one with the reason, the next not run
        assert [u.error for u in answered] == [None, message, "not run: an earlier action in this turn could not "
                                                                "be used"]
    elif answered is not None:  # the computer_call is answered (with the next screenshot), the reason recorded
        assert [(c.call_id, c.error) for c in answered] == [("call_1", message)]


REFUSED = [
    ("northstar", {"type": "key_down", "key": "shift"}, "key_down: holding keys down is not supported"),
    ("openai", {"type": "click", "x": 1, "y": 2, "keys": ["ctrl"]}, "click with held keys ['ctrl'] is not supported"),
    ("openai", {"type": "click", "x": 1, "y": 2, "button": "wheel"}, "middle button clicks are not supported"),
    ("anthropic", {"action": "middle_click", "coordinate": [1, 2]}, "middle button clicks are not supported"),
    ("anthropic", {"action": "left_click", "coordinate": [1, 2], "text": "shift"}, "left_click with held keys"),
    ("ui-tars", {"name": "keyup", "args": {"key": "shift"}}, "keyup: holding keys is not supported; use hotkey"),
    ("ui-tars", {"name": "click"}, "click needs start_box"),
    ("qwen", {"action": "middle_click", "coordinate": [1, 2]}, "middle button clicks are not supported"),
]


@pytest.mark.parametrize(("provider", "action", "message"), REFUSED, ids=[m for _, _, m in REFUSED])
def test_documented_actions_that_cannot_be_mapped_are_failed_steps_saying_why(provider: str, action: dict[str, Any],
                                                                             message: str) -> None:
    decision, _ = _decide(provider, [action])
    assert decision.actions == [] and message in (decision.error or ""), decision.error


MAPPED = [  # (provider, the provider's actions, the Lodestar actions: Action.to_dict(), pixels of a 1000x700 screen)
    ("northstar", [{"type": "click", "x": 10, "y": 20, "button": "right"}],
     [{"type": "right_click", "x": 10, "y": 20}]),
    ("northstar", [{"type": "click", "button": "back"}], [{"type": "key", "keys": "Alt+ArrowLeft"}]),
    ("northstar", [{"type": "drag", "path": [{"x": 1, "y": 2}, {"x": 5, "y": 5}, {"x": 30, "y": 40}]}],
     [{"type": "drag", "x": 1, "y": 2, "x2": 30, "y2": 40}]),
    ("northstar", [{"type": "drag", "x": 1, "y": 2, "end_x": 30, "end_y": 40}],
     [{"type": "drag", "x": 1, "y": 2, "x2": 30, "y2": 40}]),
    ("northstar", [{"type": "key", "keys": "ctrl+C"}], [{"type": "key", "keys": "ctrl+c"}]),
    ("northstar", [{"type": "point_and_type", "x": 5, "y": 6, "text": "hi"}],
     [{"type": "click", "x": 5, "y": 6}, {"type": "type", "text": "hi"}]),
    ("northstar", [{"type": "scroll", "x": 5, "y": 6, "scroll_y": 5000}],
     [{"type": "scroll", "x": 5, "y": 6, "dy": 500}]),
    ("northstar", [{"type": "hscroll", "amount": -40}], [{"type": "scroll", "dx": -40}]),
    ("northstar", [{"type": "wait"}, {"type": "wait", "ms": 1500}],
     [{"type": "wait", "seconds": 1.0}, {"type": "wait", "seconds": 1.5}]),
    ("northstar", [{"type": "mouse_down", "x": 1, "y": 2}, {"type": "mouse_up", "x": 30, "y": 40}],
     [{"type": "move", "x": 1, "y": 2}, {"type": "drag", "x": 1, "y": 2, "x2": 30, "y2": 40}]),
    ("northstar", [{"type": "screenshot"}, {"type": "navigate", "url": "https://example.com/"}],
     [{"type": "navigate", "url": "https://example.com/"}]),
    ("northstar", [{"type": "terminate", "status": "failure", "reason": "stuck"}], [{"type": "fail", "text": "stuck"}]),
    ("northstar", [{"type": "answer", "result": "42"}], [{"type": "done", "text": "42"}]),
    ("openai", [{"type": "keypress", "keys": ["CTRL", "A"]}], [{"type": "key", "keys": "CTRL+a"}]),
    ("openai", [{"type": "scroll", "x": 5, "y": 6, "scroll_x": -9000, "scroll_y": 300}],
     [{"type": "scroll", "x": 5, "y": 6, "dx": -2000, "dy": 300}]),
    ("openai", [{"type": "wait"}], [{"type": "wait", "seconds": 2.0}]),
    ("anthropic", [{"action": "left_click_drag", "start_coordinate": [1, 2], "coordinate": [30, 40]}],
     [{"type": "drag", "x": 1, "y": 2, "x2": 30, "y2": 40}]),
    ("anthropic", [{"action": "key", "text": "ctrl+a BackSpace"}],
     [{"type": "key", "keys": "ctrl+a"}, {"type": "key", "keys": "BackSpace"}]),
    ("anthropic", [{"action": "hold_key", "text": "shift", "duration": 2}],
     [{"type": "key", "keys": "shift"}, {"type": "wait", "seconds": 2.0}]),
    ("anthropic", [{"action": "scroll", "coordinate": [5, 6], "scroll_direction": "left", "scroll_amount": 3}],
     [{"type": "scroll", "x": 5, "y": 6, "dx": -300}]),
    ("anthropic", [{"action": "mouse_move", "coordinate": [7, 8]}, {"action": "cursor_position"},
                   {"action": "screenshot"}, {"action": "wait"}],
     [{"type": "move", "x": 7, "y": 8}, {"type": "wait", "seconds": 1.0}]),
    ("ui-tars", [{"name": "left_double", "start": (10, 20)}], [{"type": "double_click", "x": 10, "y": 20}]),
    ("ui-tars", [{"name": "select", "start": (1, 2), "end": (30, 40)}],
     [{"type": "drag", "x": 1, "y": 2, "x2": 30, "y2": 40}]),
    ("ui-tars", [{"name": "hotkey", "args": {"key": "ctrl shift t"}}], [{"type": "key", "keys": "ctrl+shift+t"}]),
    ("ui-tars", [{"name": "type", "args": {"content": "hi\n"}}],
     [{"type": "type", "text": "hi"}, {"type": "key", "keys": "Enter"}]),
    ("ui-tars", [{"name": "scroll", "start": (5, 6), "args": {"direction": "up"}}, {"name": "wait"}],
     [{"type": "scroll", "x": 5, "y": 6, "dy": -500}, {"type": "wait", "seconds": 5.0}]),
    ("ui-tars", [{"name": "finished", "args": {"content": "ok"}}], [{"type": "done", "text": "ok"}]),
    ("qwen", [{"action": "key", "keys": ["ctrl", "a"]}, {"action": "key", "keys": "alt+F4"}],
     [{"type": "key", "keys": "ctrl+a"}, {"type": "key", "keys": "alt+F4"}]),
    ("qwen", [{"action": "scroll", "pixels": -5}, {"action": "scroll", "pixels": 300},
              {"action": "hscroll", "pixels": 300}],
     [{"type": "scroll", "dy": 500}, {"type": "scroll", "dy": -300}, {"type": "scroll", "dx": 300}]),
    ("qwen", [{"action": "wait", "time": 3}, {"action": "terminate", "status": "failure"}],
     [{"type": "wait", "seconds": 3.0}, {"type": "fail", "text": "the model ended the task as failed"}]),
    ("qwen", [{"action": "answer", "text": "42"}], [{"type": "done", "text": "42"}]),
]


@pytest.mark.parametrize(("provider", "actions", "expected"), MAPPED,
                         ids=[f"{p}-{'+'.join(str(a.get('type') or a.get('action') or a.get('name')) for a in acts)}"
                              for p, acts, _ in MAPPED])
def test_the_mapping_tables_by_example(provider: str, actions: list[dict[str, Any]],
                                      expected: list[dict[str, Any]]) -> None:
    decision, _ = _decide(provider, actions)
    assert decision.error is None and [a.to_dict() for a in decision.actions] == expected


# === 2. each adapter in real Chromium ===============================================================================
@pytest.mark.browser
def test_northstar_fills_the_form_with_normalized_coordinates(fakes: Fakes, browsers: Any, site: Site,
                                                              layout: Callable[[int, int], Layout]) -> None:
    lay = layout(1000, 700)
    context = [{"role": "user", "content": "We are signing up."}, {"role": "assistant", "content": "Understood."}]

    def first(body: dict[str, Any], s: Session) -> None:
        assert body["model"] == NORTHSTAR and "previous_response_id" not in body
        assert body["tools"] == [{"type": "computer_use", "display_width": 1000, "display_height": 700,
                                  "environment": "browser"}]
        assert (body["instructions"], body["temperature"]) == ("Be brief.", 0.35)
        assert body["input"][:2] == context
        assert user_texts(body) == ["We are signing up.", "[northstar-1] Sign up as Ada Lovelace"]
        assert first_image(body) == (1000, 700)

    def continues(body: dict[str, Any], s: Session) -> None:
        assert body["previous_response_id"] == s.data["last_id"]
        [output] = call_outputs(body)
        assert output["call_id"] == s.data["last_call"] and "acknowledged_safety_checks" not in output

    def injected(body: dict[str, Any], s: Session) -> None:
        continues(body, s)
        assert user_texts(body) == ["Use the full name, please."]

    turns = responses_form(fakes.lightcone, lay, "Ada Lovelace", normalized=True,
                           checks={1: first, 2: injected, 3: continues, 4: continues})
    session = fakes.lightcone.script("[northstar-1]", [turns[0], fakes.lightcone.error(
        429, "slow down", retry_after_ms="300"), *turns[1:]])
    site.hits.clear()
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), NORTHSTAR,
                              "[northstar-1] Sign up as Ada Lovelace", (1000, 700),
                              messages_at={2: ["Use the full name, please."]}, temperature=0.35,
                              system_prompt="Be brief.", context=context, submits=True)
    no_errors(session)
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, "signed up"), outcome
    assert site.wait_for_hit()["name"] == ["Ada Lovelace"]
    assert landed(steps[0], lay.name) and landed(steps[2], lay.submit), [s.results for s in steps]
    assert steps[1].messages == ["Use the full name, please."]
    # the 429 was retried by the SDK after the retry-after-ms it asked for, then the same request succeeded
    assert len(session.requests) == 5 and session.requests[2].at - session.requests[1].at >= 0.3
    assert session.requests[2].body == session.requests[1].body
    assert [s.usage for s in steps] == [{"input_tokens": 100, "output_tokens": 20, "total_tokens": 120, "calls": 1,
                                         "cost_usd": 0.00018}] * 4


@pytest.mark.browser
def test_openai_computer_tool_runs_a_batch_and_acknowledges_auto_approved_checks(
        fakes: Fakes, browsers: Any, site: Site, layout: Callable[[int, int], Layout]) -> None:
    lay = layout(1100, 650)
    check = {"id": "sc_1", "code": "irrelevant_domain", "message": "The site is not the one the user named."}

    def first(body: dict[str, Any], s: Session) -> None:
        assert body["model"] == "gpt-5.4" and body["tools"] == [{"type": "computer"}] and "truncation" not in body
        assert first_image(body) == (1100, 650) and "instructions" not in body and "temperature" not in body

    def acknowledged(body: dict[str, Any], s: Session) -> None:
        [output] = call_outputs(body)
        assert output["call_id"] == s.data["last_call"] and output["acknowledged_safety_checks"] == [check]
        assert output["output"]["type"] == "computer_screenshot" and user_texts(body) == []

    turns = responses_form(fakes.openai, lay, "Grace Hopper", normalized=False, batch=True,
                           checks={1: first, 2: acknowledged})

    def with_check(body: dict[str, Any], s: Session) -> dict[str, Any]:
        answer = turns[0](body, s)
        answer["output"][0]["pending_safety_checks"] = [check]
        return answer  # type: ignore[no-any-return]

    session = fakes.openai.script("[openai-ga]", [with_check, turns[1]])
    site.hits.clear()
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site, auto_approve_safety_checks=True),
                              OPENAI_GA, "[openai-ga] Sign up as Grace Hopper", (1100, 650), submits=True)
    no_errors(session)
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, "Signed up."), outcome
    assert site.wait_for_hit()["name"] == ["Grace Hopper"]
    assert [a.type for a in steps[0].actions] == ["click", "type", "click"] and all(r.ok for r in steps[0].results)
    assert [item["type"] for item in steps[0].native] == ["computer_call"]  # the model's own action, recorded
    assert landed(steps[0], lay.name) and abs(steps[0].results[2].x - lay.submit[0]) <= 1.5  # type: ignore[operator]
    assert "auto-approved" in (steps[0].thought or "") and check["message"] in (steps[0].thought or "")


@pytest.mark.browser
def test_openai_preview_tool_declares_the_display_and_truncates(fakes: Fakes, browsers: Any, site: Site,
                                                                layout: Callable[[int, int], Layout]) -> None:
    lay = layout(1024, 640)

    def first(body: dict[str, Any], s: Session) -> None:
        assert body["model"] == "computer-use-preview" and body["truncation"] == "auto"
        assert body["tools"] == [{"type": "computer_use_preview", "display_width": 1024, "display_height": 640,
                                  "environment": "browser"}]

    def continues(body: dict[str, Any], s: Session) -> None:
        assert body["previous_response_id"] == s.data["last_id"] and body["truncation"] == "auto"
        assert call_outputs(body)[0]["call_id"] == s.data["last_call"]

    session = fakes.openai.script("[openai-preview]", responses_form(
        fakes.openai, lay, "Alan Turing", normalized=False,
        checks={1: first, 2: continues, 3: continues, 4: continues}))
    site.hits.clear()
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), OPENAI_PREVIEW,
                              "[openai-preview] Sign up as Alan Turing", (1024, 640), submits=True)
    no_errors(session)
    assert outcome.code == ExitCode.COMPLETED and site.wait_for_hit()["name"] == ["Alan Turing"]
    assert landed(steps[0], lay.name) and landed(steps[2], lay.submit) and len(steps) == 4


@pytest.mark.browser
def test_anthropic_scales_the_screenshot_resends_the_history_and_drops_old_images(
        fakes: Fakes, browsers: Any, site: Site, layout: Callable[[int, int], Layout]) -> None:
    lay = layout(1600, 900)

    def first(body: dict[str, Any], s: Session) -> None:
        [size] = images_in(body)
        assert size[0] * size[1] <= 1_150_000 and size[0] < 1600 and abs(size[0] / size[1] - 16 / 9) < 0.01
        assert body["tools"] == [{"type": "computer_20250124", "name": "computer", "display_width_px": size[0],
                                  "display_height_px": size[1]}]
        assert (body["model"], body["system"], "temperature" in body) == ("claude-haiku-4-5", "Be brief.", False)
        assert last_user_blocks(body)[0] == {"type": "text", "text": "[claude-1] Sign up as Ada Lovelace"}

    def second(body: dict[str, Any], s: Session) -> None:
        [result] = last_user_blocks(body)
        assert result["tool_use_id"] == s.data["tool_uses"][0] and "is_error" not in result
        assert [b["type"] for b in result["content"]] == ["image"]
        assert body["messages"][1]["content"][0]["text"] == "I will click the Name field."  # history resent

    def third(body: dict[str, Any], s: Session) -> None:
        typed, clicked, note = last_user_blocks(body)
        assert [typed["tool_use_id"], clicked["tool_use_id"]] == s.data["tool_uses"][1:]
        assert "content" not in typed and [b["type"] for b in clicked["content"]] == ["image"]
        assert note == {"type": "text", "text": "Thanks, almost there."}
        assert len(images_in(body)) == 2  # model_screenshots_kept=2: the first screenshot became a placeholder
        assert body["messages"][0]["content"][-1] == {"type": "text", "text": "(an older screenshot, omitted)"}

    session = fakes.anthropic.script("[claude-1]", anthropic_form(fakes.anthropic, lay, "Ada Lovelace",
                                                                 checks={1: first, 2: second, 3: third}))
    site.hits.clear()
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site, model_screenshots_kept=2), CLAUDE,
                              "[claude-1] Sign up as Ada Lovelace", (1600, 900),
                              messages_at={3: ["Thanks, almost there."]}, system_prompt="Be brief.", submits=True)
    no_errors(session)
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, "Signed up."), outcome
    assert site.wait_for_hit()["name"] == ["Ada Lovelace"]
    assert landed(steps[0], lay.name) and abs(steps[1].results[1].x - lay.submit[0]) <= 1.5  # type: ignore[operator]
    assert steps[0].usage == {"input_tokens": 1000, "output_tokens": 50, "total_tokens": 1050, "calls": 1,
                              "cost_usd": 0.00375}
    # the step records keep the model's own action next to the normalized one (trajectories), and the timings
    assert [b["type"] for b in steps[0].native] == ["tool_use"] and steps[0].native[0]["name"] == "computer"
    assert set(steps[0].timings) == {"observe_ms", "decide_ms", "act_ms"}


@pytest.mark.browser
def test_anthropic_zoom_and_cursor_position_answer_in_the_next_tool_results(fakes: Fakes, browsers: Any,
                                                                            site: Site) -> None:
    def first(body: dict[str, Any], s: Session) -> Any:
        assert body["tools"][0]["type"] == "computer_20251124" and body["tools"][0]["enable_zoom"] is True
        return fakes.anthropic.message([fakes.anthropic.tool_use(s, "mouse_move", coordinate=[300, 200]),
                                        fakes.anthropic.tool_use(s, "cursor_position"),
                                        fakes.anthropic.tool_use(s, "zoom", region=[0, 0, 400, 100]),
                                        fakes.anthropic.tool_use(s, "middle_click", coordinate=[5, 5])])

    def second(body: dict[str, Any], s: Session) -> Any:
        moved, cursor, zoom, middle = last_user_blocks(body)
        assert "content" not in moved and cursor["content"] == [{"type": "text", "text": "X=300,Y=200"}]
        assert [b["type"] for b in zoom["content"]] == ["image"]
        source = zoom["content"][0]["source"]
        assert Image.open(io.BytesIO(__import__("base64").b64decode(source["data"]))).size == (400, 100)
        assert middle["is_error"] is True and "middle" in middle["content"][0]["text"]
        assert middle["content"][-1]["type"] == "image"  # the new screenshot rides on the last result
        return fakes.anthropic.message([{"type": "text", "text": "Looked around."}])

    session = fakes.anthropic.script("[claude-zoom]", [first, second])
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), CLAUDE_ZOOM,
                              "[claude-zoom] Look around", (1000, 700))
    no_errors(session)
    assert outcome.code == ExitCode.COMPLETED and [a.type for a in steps[0].actions] == ["move"]
    assert steps[0].results[-1].ok is False and "middle" in (steps[0].results[-1].error or "")


@pytest.mark.browser
def test_ui_tars_sends_a_smart_resized_screenshot_and_maps_its_pixels(
        fakes: Fakes, browsers: Any, site: Site, layout: Callable[[int, int], Layout]) -> None:
    lay = layout(1000, 700)

    def first(body: dict[str, Any], s: Session) -> None:
        assert body["model"] == "ui-tars-1.5-7b" and "tools" not in body and body["max_tokens"] == 1024
        [text, image] = last_user(body)
        assert text["text"].startswith("You are a GUI agent.") and text["text"].endswith("[tars-1] Sign up as Ada")
        assert check_data_url(image["image_url"]["url"]) == (1008, 700)  # smart_resize(700, 1000), factor 28

    def fourth(body: dict[str, Any], s: Session) -> None:
        assistants = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        assert len(assistants) == 3 and assistants[1] == "Thought: Type the name.\nAction: type(content='Ada')"
        assert len(chat_images(body)) == 3  # the default model_screenshots_kept

    session = fakes.chat.script("[tars-1]", ui_tars_form(fakes.chat, lay, "Ada", checks={1: first, 4: fourth}))
    site.hits.clear()
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), UI_TARS, "[tars-1] Sign up as Ada",
                              (1000, 700), submits=True)
    no_errors(session)
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, "signed up"), outcome
    assert site.wait_for_hit()["name"] == ["Ada"] and landed(steps[0], lay.name) and landed(steps[2], lay.submit)


@pytest.mark.browser
def test_qwen3_tool_calls_in_relative_coordinates(fakes: Fakes, browsers: Any, site: Site,
                                                  layout: Callable[[int, int], Layout]) -> None:
    lay = layout(900, 600)

    def first(body: dict[str, Any], s: Session) -> None:
        [tool] = body["tools"]
        assert "The screen's resolution is 1000x1000." in tool["function"]["description"]
        assert chat_images(body) == [(900, 600)]  # relative coordinates: no resize
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}

    def third(body: dict[str, Any], s: Session) -> None:
        assistants = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        assert assistants[0].startswith("<tool_call>") and '"left_click"' in assistants[0]
        assert assistants[1].startswith("Typing the name.")

    session = fakes.chat.script("[qwen-1]", qwen_form(fakes.chat, lay, "Ada", normalized=True,
                                                     checks={1: first, 3: third}))
    site.hits.clear()
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), QWEN3, "[qwen-1] Sign up as Ada",
                              (900, 600), system_prompt="Be brief.", submits=True)
    no_errors(session)
    assert outcome.code == ExitCode.COMPLETED and site.wait_for_hit()["name"] == ["Ada"]
    assert landed(steps[0], lay.name) and landed(steps[2], lay.submit)


@pytest.mark.browser
@pytest.mark.parametrize("model", [NORTHSTAR, OPENAI_GA, CLAUDE, UI_TARS])
def test_an_error_after_the_retries_fails_the_task_with_the_providers_message(
        fakes: Fakes, browsers: Any, site: Site, model: str) -> None:
    fake = {NORTHSTAR: fakes.lightcone, OPENAI_GA: fakes.openai, CLAUDE: fakes.anthropic, UI_TARS: fakes.chat}[model]
    key = f"[down-{model}]"
    session = fake.script(key, [], forever=fake.error(500, f"the {model} backend exploded", retry_after_ms="50"))
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site, model_max_retries=2), model,
                              f"{key} anything", (800, 600))
    assert outcome.code == ExitCode.POLICY_ERROR and steps == []
    assert f"the {model} backend exploded" in (outcome.error or "") and "500" in (outcome.error or "")
    assert len(session.requests) == 3  # the first try and the SDK's two retries


@pytest.mark.browser
def test_unusable_answers_are_failed_steps_and_the_model_hears_why(fakes: Fakes, browsers: Any, site: Site) -> None:
    # UI-TARS rambles without an Action: every answer is a failed step, MAX_FAILED_STEPS of them fail the task
    chatty = fakes.chat.script("[tars-chatty]", [lambda body, s: fakes.chat.completion("I am not sure.")] * 5)
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), UI_TARS, "[tars-chatty] do it",
                              (800, 600))
    no_errors(chatty)
    assert (outcome.code, len(steps)) == (ExitCode.FAILED, MAX_FAILED_STEPS), outcome
    assert "failed steps in a row" in (outcome.error or "") and "no 'Action:'" in (outcome.error or "")
    second_turn = [p["text"] for p in last_user(chatty.bodies[1]) if p["type"] == "text"]
    assert second_turn and "no 'Action:'" in second_turn[0]
    # Northstar sends an action we do not know, then recovers: the call is still answered, with the reason
    odd = fakes.lightcone

    def recover(body: dict[str, Any], s: Session) -> Any:
        assert call_outputs(body)[0]["call_id"] == s.data["last_call"]
        assert "unknown action type 'juggle'" in user_texts(body)[0]
        return odd.response(s, [odd.computer_call(s, {"type": "terminate", "status": "success"})])

    session = odd.script("[northstar-odd]", [
        lambda body, s: odd.response(s, [odd.computer_call(s, {"type": "juggle", "balls": 3})]), recover])
    outcome, steps = run_task(browsers, site, provider_settings(fakes, site), NORTHSTAR, "[northstar-odd] go",
                              (800, 600))
    no_errors(session)
    assert outcome.code == ExitCode.COMPLETED and steps[0].results[0].ok is False


# === 3. end to end through the API ====================================================================================
@pytest.fixture(scope="module")
def api(redis_base: str, site: Site, fakes: Fakes) -> Iterator[LiveStack]:
    """API + one worker on database 11, the SDKs pointed at the fakes by their standard environment variables."""
    chat = {"base_url": fakes.chat.base_url, "api_key": KEYS["chat"]}
    stack, info = start_stack(f"{redis_base}/11", site, concurrency=1, extra_env={
        "LIGHTCONE_BASE_URL": fakes.lightcone.base_url, "TZAFON_API_KEY": KEYS["lightcone"],
        "OPENAI_BASE_URL": fakes.openai.base_url, "OPENAI_API_KEY": KEYS["openai"],
        "ANTHROPIC_BASE_URL": fakes.anthropic.url, "ANTHROPIC_API_KEY": KEYS["anthropic"],
        "LODESTAR_MODELS": json.dumps({UI_TARS: chat, QWEN25: chat}),
        "LODESTAR_MODEL_PRICES": json.dumps(PRICES), "LODESTAR_MODEL_TIMEOUT": "15",
        "LODESTAR_MODEL_MAX_RETRIES": "1",
    })
    yield info
    stack.stop()


def submit(live: LiveStack, site: Site, model: str, instruction: str, **extra: Any) -> str:
    resp = live.http().post(f"{live.base_url}/agent/tasks", json={
        "instruction": instruction, "model": model, "start_url": site.url("form.html"), "viewport_width": 1000,
        "viewport_height": 700, "max_steps": 10, **extra}, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["task_id"])


def events(live: LiveStack, task_id: str) -> list[dict[str, Any]]:
    resp = live.http().get(f"{live.base_url}/agent/tasks/{task_id}/events", stream=True, timeout=30)
    return [json.loads(line[6:]) for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]


E2E = [
    (NORTHSTAR, lambda f, lay, key: f.lightcone.script(key, responses_form(f.lightcone, lay, "Ada", True)), 4,
     (100, 20)),
    (OPENAI_GA, lambda f, lay, key: f.openai.script(key, responses_form(f.openai, lay, "Ada", False, batch=True)), 2,
     (100, 20)),
    (CLAUDE, lambda f, lay, key: f.anthropic.script(key, anthropic_form(f.anthropic, lay, "Ada")), 3, (1000, 50)),
    (UI_TARS, lambda f, lay, key: f.chat.script(key, ui_tars_form(f.chat, lay, "Ada")), 4, (300, 30)),
    (QWEN25, lambda f, lay, key: f.chat.script(key, qwen_form(f.chat, lay, "Ada", normalized=False)), 4, (300, 30)),
]


@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.browser
@pytest.mark.parametrize(("model", "script", "steps", "usage"), E2E, ids=[m for m, *_ in E2E])
def test_each_provider_runs_a_task_submitted_through_the_api(
        api: LiveStack, fakes: Fakes, site: Site, layout: Callable[[int, int], Layout], model: str,
        script: Callable[[Fakes, Layout, str], Session], steps: int, usage: tuple[int, int]) -> None:
    key = f"[e2e-{model}]"
    session = script(fakes, layout(1000, 700), key)
    site.hits.clear()
    task_id = submit(api, site, model, f"{key} Sign up as Ada")
    task = api.wait_ended(task_id)
    no_errors(session)
    assert (task["status"], task["exit_code"], task["model"]) == ("completed", 0, model), task
    assert site.wait_for_hit()["name"] == ["Ada"]
    price = next(p for pattern, p in PRICES.items() if model.startswith(pattern.rstrip("*")))
    assert task["steps_taken"] == steps and task["usage"] == {
        "input_tokens": usage[0] * steps, "output_tokens": usage[1] * steps, "total_tokens": sum(usage) * steps,
        "calls": steps}
    assert math.isclose(task["cost"], steps * (usage[0] * price[0] + usage[1] * price[1]) / 1e6, rel_tol=1e-6)
    step_events = [e for e in events(api, task_id) if e["type"] == "step"]
    assert [e["usage"]["calls"] for e in step_events] == [1] * steps


@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.browser
def test_a_safety_check_pauses_the_task_until_the_user_resumes_it(api: LiveStack, fakes: Fakes, site: Site,
                                                                  layout: Callable[[int, int], Layout]) -> None:
    lay = layout(1000, 700)
    check = {"id": "sc_42", "code": "malicious_instructions", "message": "The page asks to ignore the user."}
    fake = fakes.openai

    def first(body: dict[str, Any], s: Session) -> Any:
        action = {"type": "click", "button": "left", **dict(zip("xy", scaled(lay.name, first_image(body), lay)))}
        return fake.response(s, [fake.computer_call(s, action, checks=[check])])

    def second(body: dict[str, Any], s: Session) -> Any:
        [output] = call_outputs(body)
        assert output["acknowledged_safety_checks"] == [check] and output["call_id"] == s.data["last_call"]
        return fake.response(s, [fake.message("Clicked after approval.")])

    session = fake.script("[e2e-safety]", [first, second])
    task_id = submit(api, site, OPENAI_PREVIEW, "[e2e-safety] Click the name field")
    paused = api.wait_until(task_id, lambda t: t["status"] == "paused", timeout=30)
    assert check["message"] in (paused["message"] or "") and paused["steps_taken"] == 0
    time.sleep(0.5)
    assert len(session.requests) == 1  # nothing runs while the question is open
    assert api.http().post(f"{api.base_url}/agent/tasks/{task_id}/resume").json()["status"] == "running"
    task = api.wait_ended(task_id)
    no_errors(session)
    assert (task["status"], task["result"], task["steps_taken"]) == ("completed", "Clicked after approval.", 2)
    asked = [e for e in events(api, task_id) if e.get("reason") == "ask_user"]
    assert len(asked) == 1 and asked[0]["status"] == "paused" and check["message"] in asked[0]["question"]


@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.browser
def test_call_user_is_answered_with_an_injected_message(api: LiveStack, fakes: Fakes, site: Site) -> None:
    fake = fakes.chat

    def second(body: dict[str, Any], s: Session) -> Any:
        texts = [p["text"] for p in last_user(body) if p["type"] == "text"]
        assert texts == ["The Pro plan."], texts
        return fake.completion("Thought: The user wants Pro.\nAction: finished(content='Pro it is')")

    session = fake.script("[e2e-ask]", [lambda body, s: fake.completion(
        "Thought: Which plan should I pick?\nAction: call_user()"), second])
    task_id = submit(api, site, UI_TARS, "[e2e-ask] Pick a plan")
    paused = api.wait_until(task_id, lambda t: t["status"] == "paused", timeout=30)
    assert "Which plan should I pick?" in paused["message"]
    resp = api.http().post(f"{api.base_url}/agent/tasks/{task_id}/messages", json={"message": "The Pro plan."})
    assert resp.status_code == 200, resp.text
    task = api.wait_ended(task_id)
    no_errors(session)
    assert (task["status"], task["result"]) == ("completed", "Pro it is"), task
    statuses = [(e["status"], e.get("reason")) for e in events(api, task_id) if e["type"] == "status"]
    assert ("paused", "ask_user") in statuses and ("running", "answered") in statuses


@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.browser
def test_a_provider_that_stays_down_fails_the_task_with_exit_code_7(api: LiveStack, fakes: Fakes,
                                                                      site: Site) -> None:
    session = fakes.anthropic.script("[e2e-down]", [], forever=fakes.anthropic.error(
        529, "Overloaded right now", retry_after_ms="50"))
    task = api.wait_ended(submit(api, site, CLAUDE, "[e2e-down] anything"))
    assert (task["status"], task["exit_code"]) == ("failed", 7), task
    assert "Overloaded right now" in task["error"] and "529" in task["error"]
    assert len(session.requests) == 2 and task["usage"] is None and task["cost"] is None  # LODESTAR_MODEL_MAX_RETRIES=1


@pytest.mark.redis
@pytest.mark.worker
@pytest.mark.browser
def test_an_unknown_model_is_refused_at_submit_naming_the_field(api: LiveStack) -> None:
    resp = api.http().post(f"{api.base_url}/agent/tasks", json={"instruction": "hi", "model": "acme/robot-9000"})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert list(error["fields"]) == ["model"] and "acme/robot-9000" in error["fields"]["model"][0]
    scripted = api.http().post(f"{api.base_url}/agent/tasks", json={
        "instruction": "done", "model": "acme/robot-9000", "agent_type": "scripted"})
    assert scripted.status_code == 200  # an offline agent needs no model provider


def test_observation_frames_are_scaled_only_when_the_spec_says() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 900), "white").save(buffer, "JPEG")
    observation = Observation(buffer.getvalue(), "about:blank", "", 1600, 900)
    claude = ModelRegistry().resolve(CLAUDE)
    northstar = ModelRegistry().resolve(NORTHSTAR)
    assert claude is not None and northstar is not None
    scaled_frame = Screen(claude).frame(observation)
    assert (scaled_frame.width, scaled_frame.height) == Image.open(io.BytesIO(scaled_frame.image)).size
    assert scaled_frame.width * scaled_frame.height <= 1_150_000 and scaled_frame.viewport_width == 1600
    same = Screen(northstar).frame(observation)
    assert (same.width, same.height, same.image) == (1600, 900, observation.screenshot)


def test_a_model_without_its_key_or_provider_fails_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.policy import PolicyError

    monkeypatch.delenv("TZAFON_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings(env={})
    for model in (NORTHSTAR, OPENAI_GA):
        with pytest.raises(PolicyError, match="api_key"):
            make_policy(None, Episode(task_id="t", instruction="x", model=model), settings=settings)
    with pytest.raises(PolicyError, match="no model provider serves"):
        make_policy(None, Episode(task_id="t", instruction="x", model="openai-compat/nothing"), settings=settings)
