"""``worker.loop.run_episode`` with an in-memory computer and policy, and the real Redis-backed control channel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import control
from shared.control import ControlChannel
from shared.settings import Settings
from shared.states import ExitCode, Status
from shared.store import TaskStore
from tests.conftest import make_task
from worker.computer import Action, ActionError, Observation, Target, execute
from worker.loop import MAX_FAILED_STEPS, Outcome, run_episode
from worker.policy import Decision, Episode, PolicyError, StepRecord

pytestmark = pytest.mark.redis


class FakeComputer:
    """Implements the ``Computer`` protocol in memory and records every call as ``(method, args)``.

    ``failing`` names methods that raise ``ActionError`` (an expected action failure).
    """

    def __init__(self, width: int = 800, height: int = 600, failing: tuple[str, ...] = ()):
        self.width, self.height = width, height
        self.failing = set(failing)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.url = "https://example.test/"

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.failing:
            raise ActionError(f"{name} failed on purpose")

    def acted(self) -> list[str]:
        """Names of the calls that act on the machine (not observations)."""
        return [name for name, _ in self.calls if name not in ("observe", "screenshot", "current_url")]

    def observe(self, accessibility: bool = True) -> Observation:
        self.calls.append(("observe", (accessibility,)))
        return Observation(b"\xff\xd8fake", self.url, "Fake page", self.width, self.height, accessibility="- main")

    def screenshot(self) -> bytes:
        self.calls.append(("screenshot", ()))
        return b"\xff\xd8fake"


    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        self._record("click", x, y, button, count)

    def double_click(self, x: int, y: int) -> None:
        self._record("double_click", x, y)

    def scroll(self, x: int, y: int, dx: int, dy: int) -> None:
        self._record("scroll", x, y, dx, dy)

    def type(self, text: str) -> None:
        self._record("type", text)

    def key(self, keys: str) -> None:
        self._record("key", keys)

    def move(self, x: int, y: int) -> None:
        self._record("move", x, y)

    def drag(self, x: int, y: int, x2: int, y2: int) -> None:
        self._record("drag", x, y, x2, y2)

    def wait(self, seconds: float) -> None:
        self._record("wait", seconds)

    def navigate(self, url: str) -> None:
        self._record("navigate", url)
        self.url = url

    def locate(self, target: Target) -> tuple[int, int]:
        self._record("locate", target)
        return 10, 20

    def select(self, target: Target, option: str) -> None:
        self._record("select", target, option)

    def close(self) -> None:
        self.calls.append(("close", ()))

    def evaluate_js(self, script: str) -> None:  # not in the protocol: must never be reachable by a policy
        self._record("evaluate_js", script)


@dataclass
class ListPolicy:
    """Returns its decisions in order (the last one repeats); records what each step's episode held."""

    decisions: list[Decision | Callable[[Episode], Decision]]
    needs_accessibility: bool = False
    seen_new_messages: list[list[str]] = field(default_factory=list)
    seen_history_lengths: list[int] = field(default_factory=list)

    def decide(self, observation: Observation, episode: Episode) -> Decision:
        self.seen_new_messages.append(list(episode.new_messages))
        self.seen_history_lengths.append(len(episode.history))
        index = min(len(self.seen_new_messages) - 1, len(self.decisions) - 1)
        item = self.decisions[index]
        return item(episode) if callable(item) else item


@dataclass
class Harness:
    """A running task in Redis, its worker-side control channel, and a recording ``on_step``."""

    store: TaskStore
    task_id: str
    channel: ControlChannel | None = None
    steps: list[StepRecord] = field(default_factory=list)
    step_result: bool = True

    def on_step(self, record: StepRecord, observation: Observation) -> bool:
        assert observation.url
        self.steps.append(record)
        return self.step_result

    def notice_arrived(self) -> None:
        """Wait (bounded) until a control notice just published is readable on the worker's pub/sub socket:
        pub/sub is asynchronous, and the loop's poll never blocks."""
        assert self.channel is not None
        connection = self.channel._pubsub.connection
        assert connection is not None and connection.can_read(timeout=5), "the notice never reached the worker"

    def run(self, computer: FakeComputer, policy: ListPolicy, max_steps: int = 20,
            deadline: float | None = None, **kwargs: Any) -> Outcome:
        episode = Episode(task_id=self.task_id, instruction="do it", max_steps=max_steps)
        self.episode = episode
        self.channel = ControlChannel(self.store, self.task_id)  # as the worker does, right before the loop
        return run_episode(computer, policy, episode, self.channel, self.on_step,
                           time.monotonic() + 60 if deadline is None else deadline, **kwargs)


@pytest.fixture
def harness(settings: Settings) -> Iterator[Harness]:
    store = TaskStore.from_settings(settings)
    task_id = make_task(store, max_steps=20)
    assert store.claim(task_id, "test-worker")[0] == "started"
    harness = Harness(store, task_id)
    yield harness
    if harness.channel is not None:
        harness.channel.close()
    store.redis.close()


def test_done_completes_with_the_result_after_the_actions_before_it(harness: Harness) -> None:
    # Given a policy that clicks, types and declares itself done in one decision
    computer = FakeComputer()
    policy = ListPolicy([Decision([Action("click", x=5, y=6), Action("type", text="hi"), Action("done", text="42")],
                                  thought="finish")])
    # When the episode runs
    outcome = harness.run(computer, policy)
    # Then it completed with the result, after both actions ran in order, in one step
    assert outcome == Outcome(ExitCode.COMPLETED, result="42")
    assert computer.calls[1:] == [("click", (5, 6, "left", 1)), ("type", ("hi",))]
    assert [s.step for s in harness.steps] == [1]
    assert [r.ok for r in harness.steps[0].results] == [True, True]
    assert harness.steps[0].thought == "finish" and harness.steps[0].url == "https://example.test/"


def test_fail_ends_as_failed_with_the_reason(harness: Harness) -> None:
    computer = FakeComputer()
    outcome = harness.run(computer, ListPolicy([Decision([Action("wait", seconds=0)]),
                                                Decision([Action("fail", text="no invoice here")])]))
    assert outcome == Outcome(ExitCode.FAILED, error="no invoice here")
    assert len(harness.steps) == 2 and computer.acted() == ["wait"]


def test_fail_without_a_reason_still_has_an_error(harness: Harness) -> None:
    outcome = harness.run(FakeComputer(), ListPolicy([Decision([Action("fail")])]))
    assert outcome.code == ExitCode.FAILED and outcome.error


def test_max_steps_ends_the_episode(harness: Harness) -> None:
    computer = FakeComputer()
    outcome = harness.run(computer, ListPolicy([Decision([Action("scroll", dy=100)])]), max_steps=3)
    assert outcome.code == ExitCode.MAX_STEPS and "max_steps (3)" in (outcome.error or "")
    assert [s.step for s in harness.steps] == [1, 2, 3]
    assert computer.acted() == ["scroll"] * 3


def test_first_step_continues_the_count_of_a_restarted_task(harness: Harness) -> None:
    outcome = harness.run(FakeComputer(), ListPolicy([Decision([Action("wait")])]), max_steps=5, first_step=4)
    assert outcome.code == ExitCode.MAX_STEPS
    assert [s.step for s in harness.steps] == [4, 5]


def test_a_deadline_in_the_past_times_out_before_observing(harness: Harness) -> None:
    computer = FakeComputer()
    policy = ListPolicy([Decision([Action("done")])])
    outcome = harness.run(computer, policy, deadline=time.monotonic() - 1)
    assert outcome.code == ExitCode.TIMED_OUT
    assert computer.calls == [] and policy.seen_new_messages == [] and harness.steps == []


def test_the_deadline_is_checked_on_the_given_clock(harness: Harness) -> None:
    # Given a clock that advances one second per decision and a deadline at 3 s
    now = [0.0]

    class SlowPolicy(ListPolicy):
        def decide(self, observation: Any, episode: Episode) -> Decision:
            now[0] += 1
            return super().decide(observation, episode)

    computer = FakeComputer()
    outcome = harness.run(computer, SlowPolicy([Decision([Action("wait")])]), deadline=3, clock=lambda: now[0])
    # Then the third decision ran out the time: it is not acted on, and the task timed out after two steps
    assert outcome.code == ExitCode.TIMED_OUT and len(harness.steps) == 2
    assert len(computer.acted()) == 2


def test_five_failed_steps_in_a_row_fail_the_task(harness: Harness) -> None:
    # Given a policy that keeps clicking a point outside the screen
    computer = FakeComputer(width=100, height=100)
    outcome = harness.run(computer, ListPolicy([Decision([Action("click", x=500, y=5)])]))
    # Then the task fails after exactly MAX_FAILED_STEPS steps, naming the last error
    assert MAX_FAILED_STEPS == 5
    assert outcome.code == ExitCode.FAILED
    assert "5 failed steps in a row" in (outcome.error or "") and "outside the 100x100 screen" in (outcome.error or "")
    assert len(harness.steps) == 5 and all(not s.results[0].ok for s in harness.steps)
    assert computer.acted() == []  # the refused point never reached the machine


def test_failures_raised_by_the_computer_count_and_a_success_resets_the_count(harness: Harness) -> None:
    # Given 4 failing steps, one good one, then failures again
    computer = FakeComputer(failing=("key",))
    failing = Decision([Action("key", keys="Enter")])
    policy = ListPolicy([failing] * 4 + [Decision([Action("wait")])] + [failing])
    outcome = harness.run(computer, policy)
    # Then the good step reset the count: 4 + 1 + 5 steps ran before the task failed
    assert outcome.code == ExitCode.FAILED and "key failed on purpose" in (outcome.error or "")
    assert len(harness.steps) == 10
    assert computer.acted().count("key") == 9


def test_actions_after_a_failing_action_do_not_run_and_a_trailing_done_is_not_honoured(harness: Harness) -> None:
    # Given a decision whose first action fails, followed by a type and a done
    computer = FakeComputer(failing=("click",))
    policy = ListPolicy([
        Decision([Action("click", x=1, y=1), Action("type", text="secret"), Action("done", text="all good")]),
        Decision([Action("fail", text="gave up")]),
    ])
    outcome = harness.run(computer, policy)
    # Then the type never ran, the done did not complete the task, and the policy was asked again
    assert outcome == Outcome(ExitCode.FAILED, error="gave up")
    assert computer.acted() == ["click"]
    first = harness.steps[0]
    assert [r.ok for r in first.results] == [False] and "click failed on purpose" in (first.results[0].error or "")
    assert len(first.actions) == 3  # the step still records what the policy asked for
    assert policy.seen_history_lengths == [0, 1]


def test_a_done_after_a_successful_action_in_the_same_decision_completes(harness: Harness) -> None:
    computer = FakeComputer(failing=("type",))
    outcome = harness.run(computer, ListPolicy([Decision([Action("navigate", url="https://a.test/"),
                                                          Action("done", text="ok"), Action("type", text="x")])]))
    assert outcome == Outcome(ExitCode.COMPLETED, result="ok")
    assert computer.acted() == ["navigate"]  # nothing after the done ran


def test_a_policy_error_ends_with_policy_error(harness: Harness) -> None:
    def broken(episode: Episode) -> Decision:
        raise PolicyError("the model returned nonsense")

    computer = FakeComputer()
    outcome = harness.run(computer, ListPolicy([Decision([Action("wait")]), broken]))
    assert outcome == Outcome(ExitCode.POLICY_ERROR, error="the model returned nonsense")
    assert len(harness.steps) == 1 and computer.acted() == ["wait"]


def test_on_step_false_cancels(harness: Harness) -> None:
    harness.step_result = False
    computer = FakeComputer()
    outcome = harness.run(computer, ListPolicy([Decision([Action("wait"), Action("done", text="x")])]))
    assert outcome.code == ExitCode.CANCELLED
    assert len(harness.steps) == 1


def test_an_action_outside_the_allowlist_is_refused_by_execute() -> None:
    computer = FakeComputer()
    action = Action("evaluate_js", text="fetch('/admin')")  # type: ignore[arg-type]  # bypasses the Literal type
    result = execute(computer, action)
    assert result.ok is False and "'evaluate_js' is not allowed" in (result.error or "")
    assert computer.calls == []


@pytest.mark.parametrize("name", ["__init__", "close", "observe", "locate", "_record", "calls"])
def test_execute_does_not_dispatch_by_method_name(name: str) -> None:
    computer = FakeComputer()
    result = execute(computer, Action(name))  # type: ignore[arg-type]
    assert result.ok is False and computer.calls == []


def test_an_action_outside_the_allowlist_never_reaches_the_computer_in_the_loop(harness: Harness) -> None:
    computer = FakeComputer()
    evil = Action("evaluate_js", text="document.cookie")  # type: ignore[arg-type]
    outcome = harness.run(computer, ListPolicy([Decision([evil, Action("done", text="pwned")]),
                                                Decision([Action("fail", text="stop")])]))
    assert outcome.code == ExitCode.FAILED  # the done after the refused action was not honoured
    assert [r.ok for r in harness.steps[0].results] == [False]
    assert all(name != "evaluate_js" for name, _ in computer.calls)


def test_unexpected_computer_exceptions_propagate() -> None:
    class Crashing(FakeComputer):
        def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
            raise RuntimeError("browser died")

    with pytest.raises(RuntimeError, match="browser died"):
        execute(Crashing(), Action("click", x=1, y=1))


def test_injected_messages_reach_the_policy_on_exactly_one_step(harness: Harness) -> None:
    # Given a message sent before the worker subscribed and one sent while step 2 is being recorded
    assert control.send_message(harness.store, harness.task_id, "before start").ok
    original = harness.on_step

    def on_step(record: StepRecord, observation: Observation) -> bool:
        if record.step == 2:
            assert control.send_message(harness.store, harness.task_id, "during step 2").ok
            harness.notice_arrived()
        return original(record, observation)

    harness.on_step = on_step  # type: ignore[method-assign]
    policy = ListPolicy([Decision([Action("wait")])] * 6 + [Decision([Action("done")])])
    # When the episode runs
    outcome = harness.run(FakeComputer(), policy)
    assert outcome.code == ExitCode.COMPLETED
    # Then each message was new on exactly one step, and the step records carry it
    assert policy.seen_new_messages[0] == ["before start"]
    carrying = [(i + 1, m) for i, m in enumerate(policy.seen_new_messages) if m]
    assert carrying == [(1, ["before start"]), (3, ["during step 2"])]
    assert [(s.step, s.messages) for s in harness.steps if s.messages] == carrying
    assert len(harness.steps) == 7
    assert harness.episode.messages == ["before start", "during step 2"]
    assert harness.store.get(harness.task_id).messages_delivered == 2  # type: ignore[index]


def test_cancel_sent_while_deciding_stops_before_the_action(harness: Harness) -> None:
    # Given a policy during whose decision the user cancels the task
    def cancelled_meanwhile(episode: Episode) -> Decision:
        assert control.send_cancel(harness.store, harness.task_id).ok
        harness.notice_arrived()
        return Decision([Action("click", x=1, y=1)])

    computer = FakeComputer()
    outcome = harness.run(computer, ListPolicy([cancelled_meanwhile]))
    # Then the click never happens
    assert outcome.code == ExitCode.CANCELLED
    assert computer.acted() == [] and harness.steps == []


def test_pause_holds_the_loop_until_resumed(harness: Harness) -> None:
    # Given a policy that pauses the task at step 2 and a user who resumes it a moment later
    resumed = threading.Event()

    def pause_then_resume_later(episode: Episode) -> Decision:
        assert control.send_pause(harness.store, harness.task_id).ok
        harness.notice_arrived()

        def resume() -> None:
            resumed.set()
            control.send_resume(harness.store, harness.task_id)

        threading.Timer(0.3, resume).start()
        return Decision([Action("move", x=3, y=4)])

    computer = FakeComputer()
    policy = ListPolicy([Decision([Action("wait")]), pause_then_resume_later, Decision([Action("done", text="ok")])])
    acted_at_resume: list[bool] = []
    original_move = computer.move

    def move(x: int, y: int) -> None:
        acted_at_resume.append(resumed.is_set())
        original_move(x, y)

    computer.move = move  # type: ignore[method-assign]
    outcome = harness.run(computer, policy)
    # Then the move of the paused step ran only after the resume, and the task completed
    assert outcome == Outcome(ExitCode.COMPLETED, result="ok")
    assert acted_at_resume == [True]
    assert harness.store.get(harness.task_id).status == Status.RUNNING  # type: ignore[index]


def test_a_task_paused_until_its_deadline_does_not_act(harness: Harness) -> None:
    deadline = time.monotonic() + 0.5

    def pause_until_the_deadline(episode: Episode) -> Decision:
        assert control.send_pause(harness.store, harness.task_id).ok
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return Decision([Action("click", x=1, y=1)])

    computer = FakeComputer()
    outcome = harness.run(computer, ListPolicy([pause_until_the_deadline]), deadline=deadline)
    assert outcome.code == ExitCode.TIMED_OUT
    assert computer.acted() == []


def test_human_actions_run_while_paused_as_human_steps_and_the_agent_is_told(harness: Harness) -> None:
    # Given a policy whose second decision (a move) finds the task paused by the user, who then acts on the paused
    # task's computer twice (a click, and a "done" that a human may not send) and resumes it
    def paused_by_the_user(episode: Episode) -> Decision:
        assert control.send_pause(harness.store, harness.task_id).ok
        harness.notice_arrived()

        def user() -> None:
            handed = [harness.store.takeover.submit(harness.task_id, f"act_{n}", action)
                      for n, action in enumerate(({"type": "click", "x": 5, "y": 6}, {"type": "done"}))]
            assert [h.outcome for h in handed] == ["queued", "queued"]
            deadline = time.monotonic() + 30
            while len([s for s in harness.steps if s.human]) < 2:
                assert time.monotonic() < deadline, "the worker never performed the user's actions"
                time.sleep(0.01)
            control.send_resume(harness.store, harness.task_id)

        threading.Thread(target=user).start()
        return Decision([Action("move", x=3, y=4)])

    computer = FakeComputer()
    policy = ListPolicy([Decision([Action("wait")]), paused_by_the_user, Decision([Action("done", text="ok")])])
    outcome = harness.run(computer, policy, max_steps=3)
    # Then the user's actions ran on the computer, before the agent's pending move, as human steps with their ids
    assert outcome == Outcome(ExitCode.COMPLETED, result="ok")
    assert [name for name, _ in computer.calls if name in ("click", "move")] == ["click", "move"]
    human = [s for s in harness.steps if s.human]
    assert [(s.step, s.request_id, s.results[0].ok) for s in human] == [(2, "act_0", True), (3, "act_1", False)]
    assert human[0].actions == [Action("click", x=5, y=6)] and "cannot be 'done'" in str(human[1].results[0].error)
    # and numbered in the task's sequence without using up the agent's steps (max_steps 3: wait, move, done)
    assert [s.step for s in harness.steps] == [1, 2, 3, 4, 5]
    # and the agent was told what the user did at its next step
    told = policy.seen_new_messages[2]
    assert told[0] == "While the task was paused, the user took over: click at (5, 6): ok"
    assert told[1].startswith("While the task was paused, the user took over: done: failed")
    assert harness.store.takeover.take(harness.task_id) == []
