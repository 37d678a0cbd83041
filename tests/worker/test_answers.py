"""Final answers checked against a task's ``output_schema`` in the loop (``worker.loop.check_answer``), with the
in-memory computer and policy of ``test_loop``: a matching answer is the result (a JSON value), one that does not is
sent back as the step's error ``answer_retries`` times, then the task fails with exit code 1 naming the errors."""

from __future__ import annotations

import time
from typing import Any

from shared.control import LocalControl
from shared.states import ExitCode
from tests.worker.test_loop import FakeComputer, ListPolicy
from worker.computer import Action
from worker.loop import Outcome, run_episode
from worker.policy import Decision, Episode, StepRecord
from worker.scripted import ScriptedPolicy

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}},
          "required": ["name", "n"]}


def run(policy: Any, retries: int = 0, schema: dict[str, Any] | None = SCHEMA) -> tuple[Outcome, list[StepRecord]]:
    episode = Episode(task_id="t", instruction="x", output_schema=schema)
    steps: list[StepRecord] = []
    outcome = run_episode(FakeComputer(), policy, episode, LocalControl(), lambda s, _o: steps.append(s) is None,
                          time.monotonic() + 60, answer_retries=retries)
    return outcome, steps


def test_a_scripted_answer_that_matches_is_the_result_as_json() -> None:
    outcome, _ = run(ScriptedPolicy('done {"name": "ada", "n": 3}'))
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, {"name": "ada", "n": 3})


def test_a_scripted_answer_that_does_not_match_fails_at_once_with_the_errors() -> None:
    outcome, steps = run(ScriptedPolicy('done {"name": "ada", "n": "three"}'), retries=0)
    assert outcome.code == ExitCode.FAILED and outcome.result is None
    assert outcome.error == "the final answer does not match output_schema: $.n: 'three' is not of type 'integer'"
    assert len(steps) == 1 and steps[0].results[-1].error == outcome.error


def test_without_a_schema_the_result_stays_the_text() -> None:
    outcome, _ = run(ScriptedPolicy('done {"name": "ada"}'), schema=None)
    assert outcome.result == '{"name": "ada"}'
    outcome, _ = run(ScriptedPolicy('done "found it"'), schema=None)
    assert outcome.result == "found it"


def test_a_string_schema_takes_a_quoted_answer() -> None:
    outcome, _ = run(ScriptedPolicy('done "found it"'), schema={"type": "string", "minLength": 3})
    assert (outcome.code, outcome.result) == (ExitCode.COMPLETED, "found it")


def test_a_model_hears_why_its_answer_was_refused_and_answers_again() -> None:
    # Given a model whose first final answer is text with the wrong JSON, and whose second matches
    def second(episode: Episode) -> Decision:
        problems = [r.error for r in episode.history[-1].results if not r.ok]
        assert problems == ["the final answer does not match output_schema: $: 'n' is a required property; answer "
                            "again with JSON that matches the schema"]
        return Decision([Action("done", text='Here it is: {"name": "ada", "n": 3}')])

    policy = ListPolicy([Decision([Action("done", text='{"name": "ada"}')]), second])
    outcome, steps = run(policy, retries=1)
    assert (outcome.code, outcome.result, len(steps)) == (ExitCode.COMPLETED, {"name": "ada", "n": 3}, 2)


def test_a_model_that_misses_again_fails_the_task_with_exit_code_1() -> None:
    policy = ListPolicy([Decision([Action("done", text="no JSON here")])])
    outcome, steps = run(policy, retries=1)
    assert (outcome.code, len(steps)) == (ExitCode.FAILED, 2)
    assert outcome.error == "the final answer does not match output_schema: the final answer is not JSON: " \
                            "'no JSON here'"
