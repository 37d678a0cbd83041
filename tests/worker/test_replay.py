"""The pieces of recording and replaying, without a browser: the accessible name of the element under a click
(from CDP's partial AX tree), the replay policy's checks (URL, element, results), native actions of each
provider's answer shape, and actions read back from their event form. End to end: tests/e2e/test_trajectory.py."""

from __future__ import annotations

from typing import Any

import pytest

from shared.states import ExitCode
from worker.browser import named_ancestor
from worker.computer import Action, ActionError, ActionResult, Observation, Target
from worker.policy import Episode, PolicyError, StepRecord
from worker.providers.base import native_of
from worker.replay import ElementProbe, RecordedStep, ReplayPolicy, same_element


def ax(node_id: str, role: str, name: str = "", parent: str | None = None, backend: int = 0,
       ignored: bool = False) -> dict[str, Any]:
    node: dict[str, Any] = {"nodeId": node_id, "role": {"value": role}, "name": {"value": name},
                            "backendDOMNodeId": backend, "ignored": ignored}
    if parent:
        node["parentId"] = parent
    return node


def test_the_element_under_a_click_is_its_nearest_clickable_ancestor_else_its_nearest_named_one() -> None:
    # a <b> inside a <button>: the button, by its accessible name
    nodes = [ax("3", "none", parent="2", backend=7, ignored=True), ax("2", "button", "Add one", parent="1"),
             ax("1", "RootWebArea", "page")]
    assert named_ancestor(nodes, 7) == {"role": "button", "name": "Add one"}
    # a heading: no clickable ancestor, the named node itself
    nodes = [ax("4", "heading", "Hi", parent="1", backend=9), ax("5", "StaticText", "Hi", parent="4"),
             ax("1", "RootWebArea", "page")]
    assert named_ancestor(nodes, 9) == {"role": "heading", "name": "Hi"}
    # plain text in an unnamed paragraph: nothing named
    nodes = [ax("6", "paragraph", parent="1", backend=11), ax("1", "RootWebArea", "page")]
    assert named_ancestor(nodes, 11) is None
    assert named_ancestor([], 1) is None


def test_actions_read_back_from_their_event_form() -> None:
    for action in (Action("click", x=3, y=4), Action("click", target=Target("text", "Go", nth=1)),
                   Action("type", text="Ada", target=Target("label", "Name")), Action("done", text="ok", value="ok"),
                   Action("scroll", dy=-500), Action("wait", seconds=0.2), Action("click", x=0, y=7),
                   Action("click", x=5, y=0)):  # a point on the screen's edge keeps its 0
        assert Action.from_dict(action.to_dict()) == action
    with pytest.raises(ValueError, match="not an action"):
        Action.from_dict({"type": "click", "bogus": 1})


def observation(url: str) -> Observation:
    return Observation(b"", url, "", 800, 600)


def recorded(step: int, url: str, *actions: Action, elements: list[dict[str, str] | None] | None = None,
             ok: list[bool] | None = None) -> RecordedStep:
    return RecordedStep(step, url, list(actions), ok if ok is not None else [True] * len(actions), elements or [])


STEPS = [recorded(1, "about:blank", Action("navigate", url="http://a/")),
         recorded(2, "http://a/", Action("click", x=10, y=10), elements=[{"role": "button", "name": "Go"}]),
         recorded(3, "http://a/next", Action("done", text="ok"))]


def run_step(policy: ReplayPolicy, episode: Episode, url: str, results: list[ActionResult]) -> Any:
    decision = policy.decide(observation(url), episode)
    episode.history.append(StepRecord(len(episode.history) + 1, decision.actions, results, decision.thought, url))
    return decision


def test_a_replay_repeats_the_recorded_actions_and_ends_as_the_recording_did() -> None:
    policy, episode = ReplayPolicy("task_src", STEPS), Episode("task_r", "replay")
    assert run_step(policy, episode, "about:blank", [ActionResult(True)]).actions == STEPS[0].actions
    assert run_step(policy, episode, "http://a/", [ActionResult(True)]).actions == STEPS[1].actions
    # the navigation the click started has already committed: the next step's recorded URL is fine too
    assert policy.decide(observation("http://a/next"), episode).actions == [Action("done", text="ok")]


def test_a_replay_diverges_on_another_url_naming_the_step_after_waiting_for_the_page_to_settle() -> None:
    asked: list[set[str]] = []

    def settle(allowed: Any) -> str:
        asked.append(set(allowed))
        return "http://elsewhere/"

    policy, episode = ReplayPolicy("task_src", STEPS, settle=settle), Episode("task_r", "replay")
    run_step(policy, episode, "about:blank", [ActionResult(True)])
    with pytest.raises(PolicyError) as raised:
        policy.decide(observation("http://b/"), episode)
    assert raised.value.code == ExitCode.REPLAY_DIVERGED
    assert str(raised.value) == ("replay of task_src diverged at step 2: the page is http://elsewhere/, the "
                                 "recording was at http://a/")
    assert asked == [{"http://a/", "http://a/next"}]


def test_a_human_step_s_url_is_checked_after_its_action_not_before() -> None:
    # Given a recording where the user, in a takeover, clicked a link from /a to /b, then the agent finished; and
    # one that ends with such a step (its recorded URL is the page after the click: worker/loop.py's human_step)
    click = Action("click", x=5, y=5)
    steps = [recorded(1, "http://a/", Action("wait", seconds=0.1)),
             RecordedStep(2, "http://b/", [click], [True], [], human=True),
             recorded(3, "http://b/", Action("done", text="ok"))]
    policy, episode = ReplayPolicy("task_src", steps), Episode("task_r", "replay")
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    # Then the human click is replayed on /a (the page it was made on), and the next step expects /b
    assert run_step(policy, episode, "http://a/", [ActionResult(True)]).actions == [click]
    with pytest.raises(PolicyError, match="diverged at step 3: the page is http://a/, the recording was at "
                                          "http://b/"):
        policy.decide(observation("http://a/"), episode)
    policy, episode = ReplayPolicy("task_src", steps), Episode("task_r", "replay")
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    assert policy.decide(observation("http://b/"), episode).actions == [Action("done", text="ok")]
    # and a recording that ends with a human step checks where it left the page
    policy, episode = ReplayPolicy("task_src", steps[:2]), Episode("task_r", "replay")
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    with pytest.raises(PolicyError, match="diverged at step 2: the page is http://c/"):
        policy.decide(observation("http://c/"), episode)
    assert policy.decide(observation("http://b/"), episode).actions[0].type == "done"
    assert RecordedStep.from_event({"step": 2, "url": "http://b/", "actions": [click.to_dict()],
                                    "results": [{"ok": True}], "human": True}).human


def test_each_of_several_human_steps_in_a_row_is_checked_by_the_next() -> None:
    # Given a takeover of three clicks in a row, /a -> /b -> /c -> /c, then the agent finishing on /c
    click = Action("click", x=5, y=5)
    steps = [recorded(1, "http://a/", Action("wait", seconds=0.1)),
             *(RecordedStep(n, url, [click], [True], [], human=True)
               for n, url in ((2, "http://b/"), (3, "http://c/"), (4, "http://c/"))),
             recorded(5, "http://c/", Action("done", text="ok"))]
    # When the second click is replayed on a page other than the one the first click led to, it diverges there
    policy, episode = ReplayPolicy("task_src", steps), Episode("task_r", "replay")
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    run_step(policy, episode, "http://a/", [ActionResult(True)])
    with pytest.raises(PolicyError, match="diverged at step 3: the page is http://wrong/, the recording was at "
                                          "http://b/"):
        policy.decide(observation("http://wrong/"), episode)
    # Then on the recorded pages every step replays; before the last agent step only /c is right (the URL an agent
    # step before a human step recorded is not the page after the human's action)
    policy, episode = ReplayPolicy("task_src", steps), Episode("task_r", "replay")
    for url in ("http://a/", "http://a/", "http://b/", "http://c/"):
        run_step(policy, episode, url, [ActionResult(True)])
    assert policy.decide(observation("http://c/"), episode).actions == [Action("done", text="ok")]
    assert ReplayPolicy("task_src", steps[:2])._expected_urls(1) == (set(), "")  # a human step after an agent step
    assert ReplayPolicy("task_src", steps)._expected_urls(0) == ({"http://a/"}, "http://a/")  # not /b: human next


def test_a_replay_diverges_when_an_action_that_succeeded_fails_or_a_click_hits_another_element() -> None:
    policy, episode = ReplayPolicy("task_src", STEPS), Episode("task_r", "replay")
    run_step(policy, episode, "about:blank", [ActionResult(True)])
    run_step(policy, episode, "http://a/", [])
    # the click's point holds another element: the probe's check refuses the click
    with pytest.raises(ActionError, match='the page has button "Stop" where the recording clicked button "Go"'):
        policy.check_element(10, 10, {"role": "button", "name": "Stop"})
    episode.history[-1].results.append(ActionResult(False, error="refused"))
    with pytest.raises(PolicyError, match="diverged at step 2: refused") as raised:
        policy.decide(observation("http://a/next"), episode)
    assert raised.value.code == ExitCode.REPLAY_DIVERGED
    # a step that failed in the recording may fail again
    steps = [recorded(1, "u", Action("click", x=1, y=1), ok=[False]), recorded(2, "u", Action("done"))]
    policy, episode = ReplayPolicy("task_src", steps), Episode("task_r", "replay")
    run_step(policy, episode, "u", [ActionResult(False, error="no such element")])
    assert policy.decide(observation("u"), episode).actions == [Action("done")]


def test_same_element_compares_role_and_whitespace_normalized_name() -> None:
    assert same_element({"role": "button", "name": "Add  one "}, {"role": "button", "name": "Add one"})
    assert not same_element({"role": "link", "name": "Add one"}, {"role": "button", "name": "Add one"})
    assert not same_element({"role": "button", "name": "Add one"}, None)


class FakeComputer:
    width, height = 800, 600

    def __init__(self) -> None:
        self.clicks: list[tuple[int, int]] = []

    def element_at(self, x: int, y: int) -> dict[str, str] | None:
        return {"role": "button", "name": f"at {x}"}

    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        self.clicks.append((x, y))


def test_the_probe_records_each_click_and_a_check_can_refuse_it() -> None:
    inner = FakeComputer()
    probe = ElementProbe(inner)  # type: ignore[arg-type]
    probe.click(1, 2)
    probe.click(3, 4)
    assert probe.take() == [{"role": "button", "name": "at 1"}, {"role": "button", "name": "at 3"}]
    assert probe.take() == [] and inner.clicks == [(1, 2), (3, 4)]

    def refuse(x: int, y: int, found: Any) -> None:
        raise ActionError("no")

    with pytest.raises(ActionError):
        ElementProbe(inner, check=refuse).click(5, 6)  # type: ignore[arg-type]
    assert inner.clicks == [(1, 2), (3, 4)]  # refused before the click


def test_native_actions_of_each_answer_shape() -> None:
    call = {"type": "computer_call", "call_id": "c1", "action": {"type": "click", "x": 1, "y": 2}}
    assert native_of({"output": [{"type": "reasoning"}, call]}) == [call]
    tool = {"type": "tool_use", "id": "t1", "name": "computer", "input": {"action": "left_click"}}
    assert native_of({"content": [{"type": "text", "text": "ok"}, tool]}) == [tool]
    assert native_of({"choices": [{"message": {"content": "click(start_box='(1,2)')"}}]}) == "click(start_box='(1,2)')"
    calls = [{"id": "f", "function": {"name": "click", "arguments": "{}"}}]
    assert native_of({"choices": [{"message": {"content": None, "tool_calls": calls}}]}) == calls
    assert native_of({"output": [{"type": "message"}]}) is None and native_of({}) is None


def test_the_probe_warns_the_computer_before_a_click_on_a_link() -> None:
    class LinkComputer(FakeComputer):
        expected = 0

        def element_at(self, x: int, y: int) -> dict[str, str] | None:
            return {"role": "link", "name": "Go on"} if x == 1 else {"role": "button", "name": "OK"}

        def expect_navigation(self) -> None:
            self.expected += 1

    inner = LinkComputer()
    probe = ElementProbe(inner)  # type: ignore[arg-type]
    probe.click(2, 2)
    assert inner.expected == 0
    probe.click(1, 1)
    assert inner.expected == 1 and inner.clicks == [(2, 2), (1, 1)]


def test_a_takeover_step_is_recorded_without_the_secrets_the_user_typed() -> None:
    # A user taking over a task with secrets types a value (a password) by hand: the record keeps its {{name}}
    from worker.computer import ActionResult
    from worker.policy import StepRecord
    from worker.runner import redacted

    step = StepRecord(7, [Action("type", text="hunter2-secret")], [ActionResult(True)], "human takeover: type",
                      "https://a.test/", messages=["the user typed hunter2-secret"], human=True)
    clean = redacted(step, {"password": "hunter2-secret"})
    assert clean.actions[0].text == "{{password}}" and clean.messages == ["the user typed {{password}}"]
    assert "hunter2-secret" not in repr(clean)
