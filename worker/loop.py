"""The see-decide-act loop: observe the computer, ask the policy, act, record the step, repeat.

Every way out is written in :func:`run_episode`: done, fail, max_steps, max_duration, cancel, policy error,
too many failed steps. Events and storage are the injected ``on_step`` callback, so the loop knows nothing of
Redis, and the control channel (pause, cancel, injected messages) is checked before each observation and again
between the decision and the action, so a pause takes effect before the next action.

Two hooks serve model-backed policies (``worker/providers``): a ``Decision.ask_user`` question pauses the task
until the user resumes it or answers with a message (``ControlChannel.ask``), and a ``Decision.error`` (a malformed
model answer) makes the step a failed step, counted towards ``MAX_FAILED_STEPS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from shared.control import ControlState
from shared.states import ExitCode
from worker.computer import ActionResult, Computer, Observation, execute
from worker.policy import Episode, Policy, PolicyError, StepRecord

MAX_FAILED_STEPS = 5
"""Consecutive steps whose actions all failed before the task fails (exit code 1)."""


@dataclass(frozen=True)
class Outcome:
    """How an episode ended: the exit code (which implies the status), the agent's result or the error."""

    code: ExitCode
    result: str | None = None
    error: str | None = None


class Control(Protocol):
    """The worker's end of a task's control channel, as the loop uses it: ``shared.control.ControlChannel`` (Redis)
    or ``shared.control.LocalControl`` (in memory: nobody pauses or cancels)."""

    def poll(self) -> ControlState: ...
    def refresh(self) -> ControlState: ...
    def wait_while_paused(self, deadline: float) -> ControlState: ...
    def ask(self, question: str, deadline: float) -> ControlState: ...
    def take_messages(self) -> list[str]: ...


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
) -> Outcome:
    """Run ``episode`` until it ends; returns the ``Outcome`` (never raises for the agent's or a page's failure;
    the control channel's guard may raise to stop the episode at a checkpoint).

    Args:
        deadline: ``clock()`` time at which the task times out (from ``max_duration_seconds`` and its start).
        first_step: number of the first step (a task started again after a worker loss keeps counting).
        last_step: number of the last step allowed (default ``episode.max_steps``; a task started again gets
            ``max_steps`` steps of its own).
    """
    step = first_step
    last = episode.max_steps if last_step is None else last_step
    failed_in_a_row = 0
    while True:
        stopped = _checkpoint(control, deadline, clock, fresh=False)
        if stopped:
            return stopped
        if step > last:
            return Outcome(ExitCode.MAX_STEPS, error=f"max_steps ({episode.max_steps}) reached without finishing")

        observation = computer.observe(accessibility=policy.needs_accessibility)
        episode.new_messages = control.take_messages()
        episode.messages.extend(episode.new_messages)
        try:
            decision = policy.decide(observation, episode)
        except PolicyError as exc:
            return Outcome(ExitCode.POLICY_ERROR, error=str(exc))
        if decision.ask_user is not None:
            control.ask(decision.ask_user, deadline)

        stopped = _checkpoint(control, deadline, clock, fresh=True)  # a pause or cancel sent while it decided
        if stopped:
            return stopped

        results = []
        terminal = None
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
        record = StepRecord(step, list(decision.actions), results, decision.thought, observation.url,
                            episode.new_messages, usage=decision.usage)
        episode.history.append(record)
        if not on_step(record, observation):
            return Outcome(ExitCode.CANCELLED, error="the task was ended while its step ran")
        step += 1

        all_ok = all(r.ok for r in results)
        if terminal is not None and all_ok:
            if terminal.type == "done":
                return Outcome(ExitCode.COMPLETED, result=terminal.text)
            return Outcome(ExitCode.FAILED, error=terminal.text or "the agent gave up")
        failed_in_a_row = 0 if all_ok or not results else failed_in_a_row + 1
        if failed_in_a_row >= MAX_FAILED_STEPS:
            last_error = results[-1].error
            return Outcome(ExitCode.FAILED, error=f"{MAX_FAILED_STEPS} failed steps in a row; last: {last_error}")


def _checkpoint(control: Control, deadline: float, clock: Callable[[], float], fresh: bool) -> Outcome | None:
    """Honour the user's wishes before going on: hold while paused; return the outcome that ends the episode
    (cancelled, or timed out, also while paused), else None. ``fresh`` reads the status from Redis instead of
    trusting that every pub/sub notice has arrived (one round trip: used right before acting)."""
    state = control.refresh() if fresh else control.poll()
    if state.paused:
        state = control.wait_while_paused(deadline)
    if state.stop:
        return Outcome(ExitCode.CANCELLED, error="cancelled by the user")
    if state.paused or clock() >= deadline:
        return Outcome(ExitCode.TIMED_OUT, error="max_duration_seconds reached")
    return None

