"""Recording what a step clicked, and replaying a recorded task with no model (``replay_of``).

:class:`ElementProbe` wraps a task's computer: before each click it asks the browser which element is under the
point (its ARIA role and accessible name, ``BrowserComputer.element_at``), so a step's record says what was
clicked, not only where. A replay uses the same probe with a check.

:class:`ReplayPolicy` repeats the normalized actions of a recorded task (its ``step`` events, read by the worker
at claim: ``shared/trajectory.py``) step by step, at no cost, and checks that the page is still the recorded one:
before each step the URL, and at each click the element under the point (where the recording named one). The first
divergence ends the task with exit code 9 (``ExitCode.REPLAY_DIVERGED``) and ``error`` naming the step. See
``docs/trajectories.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.states import ExitCode
from worker.computer import Action, ActionError, Computer, Observation
from worker.policy import Decision, Episode, PolicyError

Element = dict[str, str]
"""An element as the accessibility tree names it: ``{"role", "name"}``."""
ElementCheck = Callable[[int, int, Element | None], None]
SETTLE_SECONDS = 5.0
"""How long a replay waits for the page to reach a recorded URL before it calls the step diverged."""


class ElementProbe:
    """Wraps a ``Computer``: each ``click`` / ``double_click`` first reads the element under the point (when the
    computer can: ``element_at``; browsers) into :attr:`seen`, and hands it to ``check`` (a replay's), which may
    refuse the click by raising ``ActionError``; before a click on a link it tells the computer a navigation may
    follow (``expect_navigation``). Every other call goes through unchanged."""

    def __init__(self, computer: Computer, check: ElementCheck | None = None):
        self._computer = computer
        self._check = check
        self._element_at = getattr(computer, "element_at", None)
        self.seen: list[Element | None] = []
        self.width, self.height = computer.width, computer.height

    def take(self) -> list[Element | None]:
        """The elements clicked since the last call, in order (None: nothing named there)."""
        seen, self.seen = self.seen, []
        return seen

    def _probe(self, x: int, y: int) -> None:
        element = self._element_at(x, y) if self._element_at is not None else None
        self.seen.append(element)
        if element is not None and element.get("role") == "link" and hasattr(self._computer, "expect_navigation"):
            self._computer.expect_navigation()  # the next screenshot must follow the page to its new document
        if self._check is not None:
            self._check(x, y, element)

    def settle_url(self, allowed: Collection[str], timeout: float = SETTLE_SECONDS) -> str:
        """The page's URL once it is one of ``allowed``, or after ``timeout`` seconds: a navigation started by the
        previous action may not have committed yet (polled every 0.1 s through the computer's ``wait``)."""
        deadline = time.monotonic() + timeout
        url = self._current_url()
        while url not in allowed and time.monotonic() < deadline:
            self._computer.wait(0.1)
            url = self._current_url()
        return url

    def _current_url(self) -> str:
        page = getattr(self._computer, "page", None)
        return str(page.url) if page is not None else self._computer.observe(accessibility=False).url

    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        self._probe(x, y)
        self._computer.click(x, y, button=button, count=count)

    def double_click(self, x: int, y: int) -> None:
        self._probe(x, y)
        self._computer.double_click(x, y)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._computer, name)


@dataclass(frozen=True)
class RecordedStep:
    """One step of a recorded task as a replay needs it: its number, the URL it acted on (for a ``human`` step of a
    takeover, the URL after its action: worker/loop.py records it after acting), its normalized actions, whether
    each succeeded, and the elements its clicks hit (in order; None where nothing was named)."""

    step: int
    url: str
    actions: list[Action]
    ok: list[bool] = field(default_factory=list)
    elements: list[Element | None] = field(default_factory=list)
    human: bool = False

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> RecordedStep:
        """From a ``step`` event (or a trajectory's step). Raises ValueError for a malformed one."""
        actions = [Action.from_dict(a) for a in event.get("actions") or []]
        ok = [bool(r.get("ok")) for r in event.get("results") or []]
        return cls(int(event["step"]), str(event.get("url") or ""), actions, ok, list(event.get("elements") or []),
                   bool(event.get("human")))


def same_element(a: Element | None, b: Element | None) -> bool:
    """Whether two probed elements are the same: equal role and accessible name (whitespace-normalized)."""
    def norm(e: Element | None) -> tuple[str, str] | None:
        return None if e is None else (e.get("role", ""), " ".join(e.get("name", "").split()))
    return norm(a) == norm(b)


def describe(element: Element | None) -> str:
    return "nothing named" if element is None else f'{element.get("role")} "{element.get("name")}"'


class ReplayPolicy:
    """Repeats ``steps`` (a recorded task's, oldest first) from ``start`` (the steps a previous attempt of this
    replay already ran), one recorded step per step, with no model. Before each step the page's URL must be the
    recorded one (or the next step's: a navigation may commit sooner than it did; ``settle`` waits up to
    :data:`SETTLE_SECONDS` for a navigation in flight); each click must hit the recorded element
    (:meth:`check_element`, given to the :class:`ElementProbe`); an action that succeeded in the recording must
    succeed again. The first divergence raises ``PolicyError`` with exit code 9 naming the recorded step. Once the
    steps run out without a ``done`` / ``fail``, the replay completes."""

    needs_accessibility = False

    def __init__(self, source: str, steps: Sequence[RecordedStep], start: int = 0,
                 settle: Callable[[Collection[str]], str] | None = None):
        self.source = source
        self.steps = list(steps)
        self.settle = settle
        """Waits for the page to reach one of the URLs given and returns the URL then (``ElementProbe.settle_url``);
        None: the observation's URL is final."""
        self._next = start
        self._current: RecordedStep | None = None
        self._expected: list[Element | None] = []

    def _diverged(self, step: RecordedStep, why: str) -> PolicyError:
        return PolicyError(f"replay of {self.source} diverged at step {step.step}: {why}", ExitCode.REPLAY_DIVERGED)

    def decide(self, observation: Observation, episode: Episode) -> Decision:
        last = episode.history[-1] if episode.history else None
        done = self._current
        if last is not None and done is not None:
            for i, result in enumerate(last.results):
                recorded_ok = done.ok[i] if i < len(done.ok) else True
                if recorded_ok and not result.ok:
                    raise self._diverged(done, result.error or "an action failed")
        allowed, recorded = self._expected_urls(self._next)
        if self._next >= len(self.steps):
            if allowed:  # the recording ends with a human step: where the user's last action left the page
                self._check_url(self.steps[-1], allowed, recorded, observation)
            return Decision([Action("done", text=f"replayed {len(self.steps)} steps of {self.source}")],
                            thought="end of the recording")
        step = self.steps[self._next]
        if allowed:
            self._check_url(step, allowed, recorded, observation)
        self._next += 1
        self._current = step
        self._expected = list(step.elements)
        return Decision(list(step.actions), thought=f"replay of step {step.step}")

    def _expected_urls(self, index: int) -> tuple[set[str], str]:
        """The URLs the page may be at before step ``index`` (``len(steps)``: the end; empty: not checked), and the
        one the recording was at there (for the divergence's message).

        An agent step recorded the URL it acted on; a navigation the previous action started commits a little
        sooner or later than it did when recorded, so the next agent step's URL is allowed too. A human step
        recorded the page after its action, so the page before the step after it must be that one, and the page
        before a human step that follows an agent step is not known (the agent's action may have moved it)."""
        steps = self.steps
        previous = steps[index - 1] if index > 0 else None
        allowed, recorded = ({previous.url}, previous.url) if previous is not None and previous.human else (set(), "")
        if index < len(steps) and not steps[index].human:
            step = steps[index]
            later = steps[index + 1] if index + 1 < len(steps) else None
            allowed |= {step.url, later.url if later is not None and not later.human else step.url}
            recorded = recorded or step.url
        return allowed, recorded

    def _check_url(self, step: RecordedStep, allowed: set[str], recorded: str, observation: Observation) -> None:
        """Raises the divergence of ``step`` unless the page is at one of ``allowed`` (after settling)."""
        url = observation.url
        if url not in allowed and self.settle is not None:
            url = self.settle(allowed)
        if url not in allowed:
            raise self._diverged(step, f"the page is {url}, the recording was at {recorded}")

    def check_element(self, x: int, y: int, found: Element | None) -> None:
        """Refuse a click (``ActionError``) whose point holds another element than the recorded click's."""
        expected = self._expected.pop(0) if self._expected else None
        if expected is not None and not same_element(expected, found):
            raise ActionError(f"at ({x}, {y}) the page has {describe(found)} where the recording clicked "
                              f"{describe(expected)}")
