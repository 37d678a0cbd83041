"""A task's ``output_schema`` asked of each provider its own way, through the official SDKs against the fakes, in real
Chromium with the real loop: OpenAI's ``text.format`` (a non-object schema wrapped and unwrapped), Anthropic's
``final_answer`` tool, the prompt for Northstar, UI-TARS and Qwen; an answer that does not match is sent back with
the validation errors once, then the task fails with exit code 1."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shared.output_schema import answer_prompt
from shared.settings import Settings
from shared.states import ExitCode
from tests.conftest import Site
from tests.fakes.anthropic import last_user_blocks
from tests.fakes.chat import last_user
from tests.fakes.responses import user_texts
from tests.fakes.server import Session
from tests.worker.test_providers import (  # fixtures and helpers only (no test is imported)
    CLAUDE,
    NORTHSTAR,
    OPENAI_GA,
    QWEN3,
    UI_TARS,
    Fakes,
    StubControl,
    browsers,
    fakes,
    no_errors,
    provider_settings,
)
from worker.agents import make_policy
from worker.loop import Outcome, run_episode
from worker.policy import Episode, StepRecord
from worker.providers.anthropic_cua import FINAL_ANSWER, FINAL_ANSWER_PROMPT

__all__ = ["browsers", "fakes"]  # module fixtures used by name

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["name", "n"]}
NAMES = {"type": "array", "items": {"type": "string"}}


@pytest.fixture(scope="module")
def settings(fakes: Fakes, site: Site) -> Settings:
    return provider_settings(fakes, site)


def answer(browsers: Any, site: Site, settings: Settings, model: str, instruction: str,
           schema: dict[str, Any]) -> tuple[Outcome, list[StepRecord]]:
    """Run one task with ``schema`` in-process as a worker would (one retry for a model's answer)."""
    episode = Episode(task_id="task_test", instruction=instruction, model=model, max_steps=5, output_schema=schema)
    policy = make_policy(None, episode, settings=settings)
    computer = browsers.open(800, 600)
    steps: list[StepRecord] = []
    try:
        computer.navigate(site.url("form.html"))
        outcome = run_episode(computer, policy, episode, StubControl(),  # type: ignore[arg-type]
                              lambda record, _obs: steps.append(record) is None, time.monotonic() + 60,
                              answer_retries=1)
    finally:
        computer.close()
    return outcome, steps


@pytest.mark.browser
def test_openai_gets_text_format_and_a_wrapped_schema_and_hears_the_errors(
        fakes: Fakes, browsers: Any, site: Site, settings: Settings) -> None:
    fake = fakes.openai
    wrapped = {"type": "object", "properties": {"answer": NAMES}, "required": ["answer"],
               "additionalProperties": False}

    def first(body: dict[str, Any], s: Session) -> Any:
        assert body["text"] == {"format": {"type": "json_schema", "name": "final_answer", "schema": wrapped,
                                           "strict": False}}
        assert user_texts(body) == ["[so-openai] List the names"]  # the schema travels in text.format only
        return fake.response(s, [fake.message('{"answer": ["ada", 3]}')])

    def second(body: dict[str, Any], s: Session) -> Any:
        assert body["previous_response_id"] == s.data["last_id"] and body["text"]["format"]["schema"] == wrapped
        assert user_texts(body) == ["The previous action failed: the final answer does not match output_schema: "
                                    "$[1]: 3 is not of type 'string'; answer again with JSON that matches the schema"]
        return fake.response(s, [fake.message('{"answer": ["ada", "grace"]}')])

    session = fake.script("[so-openai]", [first, second])
    outcome, steps = answer(browsers, site, settings, OPENAI_GA, "[so-openai] List the names", NAMES)
    no_errors(session)
    assert (outcome.code, outcome.result, len(steps)) == (ExitCode.COMPLETED, ["ada", "grace"], 2)


@pytest.mark.browser
def test_anthropic_answers_through_the_final_answer_tool_and_an_error_tool_result(
        fakes: Fakes, browsers: Any, site: Site, settings: Settings) -> None:
    fake = fakes.anthropic

    def first(body: dict[str, Any], s: Session) -> Any:
        assert body["tools"][1] == {"name": FINAL_ANSWER, "input_schema": SCHEMA, "description": body["tools"][1][
            "description"]}
        texts = [b["text"] for b in last_user_blocks(body) if b["type"] == "text"]
        assert texts == ["[so-claude] Who signed up?", FINAL_ANSWER_PROMPT]
        return fake.message([fake.client_tool_use(s, FINAL_ANSWER, {"name": "ada", "n": "3"})])

    def second(body: dict[str, Any], s: Session) -> Any:
        [result] = [b for b in last_user_blocks(body) if b["type"] == "tool_result"]
        assert result["tool_use_id"] == s.data["tool_uses"][-1] and result["is_error"] is True
        assert result["content"][0]["text"] == ("the final answer does not match output_schema: $.n: '3' is not of "
                                                "type 'integer'; answer again with JSON that matches the schema")
        return fake.message([fake.client_tool_use(s, FINAL_ANSWER, {"name": "ada", "n": 3})])

    session = fake.script("[so-claude]", [first, second])
    outcome, _ = answer(browsers, site, settings, CLAUDE, "[so-claude] Who signed up?", SCHEMA)
    no_errors(session)
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, {"name": "ada", "n": 3})


@pytest.mark.browser
def test_northstar_is_asked_in_the_prompt_and_answers_with_a_terminal_result(
        fakes: Fakes, browsers: Any, site: Site, settings: Settings) -> None:
    fake = fakes.lightcone

    def first(body: dict[str, Any], s: Session) -> Any:
        assert "text" not in body
        assert user_texts(body) == [f"[so-northstar] Who signed up?\n\n{answer_prompt(SCHEMA)}"]
        return fake.response(s, [fake.computer_call(s, {"type": "answer", "result": '{"name": "ada", "n": 3}'})])

    session = fake.script("[so-northstar]", [first])
    outcome, _ = answer(browsers, site, settings, NORTHSTAR, "[so-northstar] Who signed up?", SCHEMA)
    no_errors(session)
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, {"name": "ada", "n": 3})


@pytest.mark.browser
@pytest.mark.parametrize("model", [UI_TARS, QWEN3])
def test_open_weight_models_are_asked_in_the_prompt_and_fail_after_a_second_miss(
        fakes: Fakes, browsers: Any, site: Site, settings: Settings, model: str) -> None:
    fake = fakes.chat
    key = f"[so-{model}]"

    def reply(text: str) -> Any:
        if model == UI_TARS:
            return fake.completion(f"Thought: done.\nAction: finished(content='{text}')")
        return fake.completion(None, [{"action": "answer", "text": text}])

    def first(body: dict[str, Any], s: Session) -> Any:
        texts = [p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"]
        assert texts[0].endswith(f"{key} Who signed up?\n\n{answer_prompt(SCHEMA)}")
        return reply('{"name": "ada"}')

    def second(body: dict[str, Any], s: Session) -> Any:
        texts = [p["text"] for p in last_user(body) if p["type"] == "text"]
        assert texts == ["The previous action failed: the final answer does not match output_schema: $: 'n' is a "
                         "required property; answer again with JSON that matches the schema"]
        return reply("ada, 3")

    session = fake.script(key, [first, second])
    outcome, steps = answer(browsers, site, settings, model, f"{key} Who signed up?", SCHEMA)
    no_errors(session)
    assert (outcome.code, len(steps)) == (ExitCode.FAILED, 2)
    assert outcome.error == "the final answer does not match output_schema: the final answer is not JSON: 'ada, 3'"
