"""The see-decide-act loop: observe the computer, ask the policy, act, record the step, repeat.

Every way out is written in :func:`run_episode`: done, fail, max_steps, max_duration, cancel, policy error,
too many failed steps. Events and storage are the injected ``on_step`` callback, so the loop knows nothing of
Redis, and the control channel (pause, cancel, injected messages) is checked before each observation and again
between the decision and the action, so a pause takes effect before the next action.

Two hooks serve model-backed policies (``worker/providers``): a ``Decision.ask_user`` question pauses the task
until the user resumes it or answers with a message (``ControlChannel.ask``), and a ``Decision.error`` (a malformed
model answer) makes the step a failed step, counted towards ``MAX_FAILED_STEPS``.

Human takeover: while the task is paused, actions a user sends (the console; ``POST /agent/tasks/{id}/actions``)
are performed at the checkpoint that holds the task, through the same allowlist (:func:`execute`), each recorded as
a step marked ``human`` with the screenshot taken after it; the agent is told what the user did with its next
observation (as a message) and sees the result on the screen.

A task with an ``output_schema`` ends only on a final answer that matches it (:func:`check_answer`): an answer that
does not is a failed step whose error (the validation errors) the model reads at its next turn, ``answer_retries``
times, then the task fails with exit code 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shared.control import ControlState
from shared.output_schema import answer_errors, parse_answer
from shared.states import ExitCode
from worker.computer import Action, ActionResult, Computer, Observation, execute
from worker.policy import Episode, Policy, PolicyError, StepRecord

MAX_FAILED_STEPS = 5
"""Consecutive steps whose actions all failed before the task fails (exit code 1)."""


@dataclass(frozen=True)
class Outcome:
    """How an episode ended: the exit code (which implies the status), the agent's result (text, or the JSON value
    that matched the task's ``output_schema``) or the error."""

    code: ExitCode
    result: Any = None
    error: str | None = None


def check_answer(done: Action, schema: dict[str, Any] | None) -> tuple[Any, str | None]:
    """The result a ``done`` action gives and what is wrong with it: ``(its text, None)`` without a schema; with
    one, ``(the JSON value, None)`` when it matches, else ``(None, the reasons)``. The value is the action's
    ``value`` when the policy parsed one (a tool's input, a script's JSON), else the JSON read from its text."""
    if schema is None:
        return done.text, None
    value = done.value
    if value is None:
        try:
            value = parse_answer(done.text)
        except ValueError as exc:
            return None, f"the final answer does not match output_schema: {exc}"
    errors = answer_errors(schema, value)
    if errors:
        return None, "the final answer does not match output_schema: " + "; ".join(errors)
    return value, None


class Control(Protocol):
    """The worker's end of a task's control channel, as the loop uses it: ``shared.control.ControlChannel`` (Redis)
    or ``shared.control.LocalControl`` (in memory: nobody pauses or cancels)."""

    def poll(self) -> ControlState: ...
    def refresh(self) -> ControlState: ...
    def wait_while_paused(self, deadline: float) -> ControlState: ...
    def ask(self, question: str, deadline: float) -> ControlState: ...
    def take_messages(self) -> list[str]: ...
    def take_actions(self) -> list[dict[str, Any]]: ...


StepCallback = Callable[[StepRecord, Observation], bool]
"""Called after each step with the record and the observation the step acted on; returns False when the task was
ended by someone else (e.g. cancelled) and the loop must stop."""


def run_episode(
    computer: Computer,
    policy: Policy,
    episode: Episode,
    control: Control,
    on_step: StepCallback,
    deadline: float,
    first_step: int = 1,
    clock: Callable[[], float] = time.monotonic,
    last_step: int | None = None,
    answer_retries: int = 0,
) -> Outcome:
    """Run ``episode`` until it ends; returns the ``Outcome`` (never raises for the agent's or a page's failure;
    the control channel's guard may raise to stop the episode at a checkpoint).

    Args:
        deadline: ``clock()`` time at which the task times out (from ``max_duration_seconds`` and its start).
        first_step: number of the first step (a task started again after a worker loss keeps counting).
        last_step: number of the last step allowed (default ``episode.max_steps``; a task started again gets
            ``max_steps`` steps of its own).
        answer_retries: times a final answer that does not match ``episode.output_schema`` is sent back (as the
            step's error) before the task fails; 0 for offline agents, which could not answer again.
    """
    step = first_step
    last = episode.max_steps if last_step is None else last_step
    failed_in_a_row = 0
    retries_left = answer_retries
    notes: list[str] = []  # what the user did while the task was paused, told to the agent at its next step

    def take_over() -> None:
        nonlocal step, last
        for request in control.take_actions():
            record, seen = human_step(computer, request, step)
            on_step(record, seen)  # a task ended meanwhile is seen by the checkpoint
            result = record.results[0]
            notes.append(f"While the task was paused, the user took over: {describe(record.actions[0])}: "
                         + ("ok" if result.ok else f"failed ({result.error})"))
            step += 1
            last += 1  # the user's steps do not use up the agent's

    while True:
        stopped = _checkpoint(control, deadline, clock, fresh=False, take_over=take_over)
        if stopped:
            return stopped
        if step > last:
            return Outcome(ExitCode.MAX_STEPS, error=f"max_steps ({episode.max_steps}) reached without finishing")

        began = time.perf_counter()
        observation = computer.observe(accessibility=policy.needs_accessibility)
        observed = time.perf_counter()
        episode.new_messages = notes + control.take_messages()
        notes = []
        episode.messages.extend(episode.new_messages)
        try:
            decision = policy.decide(observation, episode)
        except PolicyError as exc:
            return Outcome(exc.code, error=str(exc))
        decided = time.perf_counter()
        if decision.ask_user is not None:
            control.ask(decision.ask_user, deadline)

        # a pause or cancel sent while it decided (the decision still runs after a takeover: a script's next line
        # must; a model sees the user's steps at its next turn)
        stopped = _checkpoint(control, deadline, clock, fresh=True, take_over=take_over)
        if stopped:
            return stopped

        results = []
        terminal = None
        acting = time.perf_counter()
        for action in decision.actions:
            if action.type in ("done", "fail"):
                terminal = action
                break
            result = execute(computer, action)
            results.append(result)
            if not result.ok:
                break
        if decision.error is not None and all(r.ok for r in results):
            results.append(ActionResult(False, error=decision.error))
        answer, wrong = None, None
        if terminal is not None and terminal.type == "done" and all(r.ok for r in results):
            answer, wrong = check_answer(terminal, episode.output_schema)
            if wrong is not None:  # the model reads it at its next turn, as the step's error
                hint = "; answer again with JSON that matches the schema" if retries_left > 0 else ""
                results.append(ActionResult(False, error=wrong + hint))
        timings = {"observe_ms": _ms(observed - began), "decide_ms": _ms(decided - observed),
                   "act_ms": _ms(time.perf_counter() - acting)}
        record = StepRecord(step, list(decision.actions), results, decision.thought, observation.url,
                            episode.new_messages, usage=decision.usage, native=decision.native, timings=timings)
        episode.history.append(record)
        if not on_step(record, observation):
            return Outcome(ExitCode.CANCELLED, error="the task was ended while its step ran")
        step += 1

        if wrong is not None:
            if retries_left <= 0:
                return Outcome(ExitCode.FAILED, error=wrong)
            retries_left -= 1
        all_ok = all(r.ok for r in results)
        if terminal is not None and all_ok:
            if terminal.type == "done":
                return Outcome(ExitCode.COMPLETED, result=answer)
            return Outcome(ExitCode.FAILED, error=terminal.text or "the agent gave up")
        failed_in_a_row = 0 if all_ok or not results else failed_in_a_row + 1
        if failed_in_a_row >= MAX_FAILED_STEPS:
            last_error = results[-1].error
            return Outcome(ExitCode.FAILED, error=f"{MAX_FAILED_STEPS} failed steps in a row; last: {last_error}")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def describe(action: Action) -> str:
    """One line for a human action: ``click at (200, 150)``, ``type "hello"``, ``key Enter``..."""
    if action.type == "type":  # the text itself stays out: a user taking over often types a password
        return f"type {len(action.text or '')} characters"
    if action.type == "key":
        return f"key {action.keys}"
    if action.type == "navigate":
        return f"navigate to {action.url}"
    if action.type == "scroll":
        return f"scroll by ({action.dx}, {action.dy})"
    if action.target is not None:
        return f"{action.type} {action.target.describe()}"
    if action.x is not None and action.y is not None:
        return f"{action.type} at ({action.x}, {action.y})"
    return action.type


def human_step(computer: Computer, request: dict[str, Any], step: int) -> tuple[StepRecord, Observation]:
    """Perform a user's action (``{"id", "action"}``, the action in its JSON form) through the allowlist, then
    look at the screen: the step record (marked ``human``) and the observation after the action. An action that
    cannot be read, or ``done`` / ``fail`` (a user cannot end the agent's task this way), is a failed step."""
    try:
        action = Action.from_dict(request.get("action") or {})
    except ValueError as exc:
        action, result = Action("wait"), ActionResult(False, error=str(exc))
    else:
        if action.type in ("done", "fail"):
            result = ActionResult(False, error=f"a human action cannot be {action.type!r}")
        else:
            result = execute(computer, action)
    observation = computer.observe(accessibility=False)
    record = StepRecord(step, [action], [result], f"human takeover: {describe(action)}", observation.url,
                        human=True, request_id=request.get("id"))
    return record, observation


def _checkpoint(control: Control, deadline: float, clock: Callable[[], float], fresh: bool,
                take_over: Callable[[], None] | None = None) -> Outcome | None:
    """Honour the user's wishes before going on: hold while paused, performing the user's actions as they come
    (``take_over``); return the outcome that ends the episode (cancelled, or timed out, also while paused), else
    None. ``fresh`` reads the status from Redis instead of trusting that every pub/sub notice has arrived (one
    round trip: used right before acting)."""
    state = control.refresh() if fresh else control.poll()
    while True:
        if state.actions and take_over is not None:
            take_over()
            state = control.poll()
            continue
        if state.paused and not state.stop:
            state = control.wait_while_paused(deadline)
            if state.actions and take_over is not None:
                continue
        break
    if state.stop:
        return Outcome(ExitCode.CANCELLED, error="cancelled by the user")
    if state.paused or clock() >= deadline:
        return Outcome(ExitCode.TIMED_OUT, error="max_duration_seconds reached")
    return None

