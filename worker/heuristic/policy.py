"""The heuristic agent (``agent_type="heuristic"``): a rule-based reader of plain-English instructions, not AI.

:class:`HeuristicPolicy` sees only what a user sees: the page's ARIA snapshot (``aria.py``), plus the URL and title.
It never runs JavaScript or reads the DOM. It turns the instruction into intents (``instructions.py``) and grounds
the next ones in the outline as actions each step (``grounding.py``), which the browser computer resolves through
Playwright's ``get_by_role`` / ``get_by_label`` / ``get_by_text``.

MiniWoB++ pages show a "START" cover (``miniwob.py``): the policy clicks it first, and once its episode has ended
(the cover shows again) it finishes with ``done``, quoting the page's visible "Last reward".
"""

from __future__ import annotations

from worker.computer import Action, Observation, Target
from worker.heuristic.aria import AriaNode, parse_aria
from worker.heuristic.grounding import GroundingError, ground
from worker.heuristic.instructions import Choose, Click, Intent, follows_page, parse_instruction
from worker.heuristic.miniwob import page_instruction, shown_reward, start_cover_visible, without_instruction
from worker.heuristic.widgets import HOVER_SECONDS
from worker.policy import Decision, Episode

DISMISS_WORDS = frozenset({"cancel", "close", "no", "dismiss", "not now", "no thanks", "later"})
"""Names of the button that dismisses a popup without doing what it asks."""


class HeuristicPolicy:
    """Rule-based offline agent (``agent_type="heuristic"``): reads the instruction, grounds it in the ARIA outline.

    State across steps (one instance per episode): whether it clicked a START cover, the intents still to do, the
    actions it sent last and how many retries it has used. Each step: a START cover at the start is clicked; a START
    cover after the episode began means the page ended it (``done`` with the visible "Last reward"); otherwise the
    next intents are grounded and sent as one batch. A batch whose actions failed (per ``episode.history``) is
    grounded again once, then the policy fails with the error.
    """

    needs_accessibility = True
    MAX_RETRIES = 2
    MAX_WAITS = 4
    WAIT_SECONDS = 0.25
    MAX_DISMISSALS = 2
    """Unexpected popups it dismisses at most in one episode."""
    MAX_LOOKS = 12
    """Tabs (or collapsed sections) and menu items it looks into at most while looking for what it must click."""

    def __init__(self, instruction: str):
        self.instruction = instruction
        self.from_page = follows_page(instruction)
        self._intents: list[Intent] | None = None if self.from_page else parse_instruction(instruction)
        self._started = False  # clicked a START cover
        self._acted = False  # sent task actions since then
        self._pending: list[Intent] | None = None  # what is left once the last decision's actions succeed
        self._sent = 0  # len(episode.history) when the last decision was made
        self._retries = 0
        self._waits = 0
        self._start_clicks = 0
        self._read_instruction: str | None = None
        self._explored: set[tuple[str, str]] = set()  # (role, name) of the tabs and menu items looked into
        self._buttons: set[str] = set()  # names of the buttons of the last observation
        self._before: list[Intent] | None = None  # the intents as they were before the last batch
        self._dismissed = 0

    def decide(self, observation: Observation, episode: Episode) -> Decision:
        """Next actions for this observation. Never raises for a page it does not understand: returns ``fail``."""
        nodes = parse_aria(observation.accessibility)
        error = self._settle(episode)
        if start_cover_visible(nodes):
            if self._acted or (self._started and self._intents == []):
                reward = shown_reward(nodes)
                result = "the page ended the episode" + (f" (last reward shown: {reward})" if reward else "")
                return Decision([Action("done", text=result)], thought=result)
            if self._start_clicks >= 3:
                return Decision([Action("fail", text="the START cover does not go away")])
            self._started = True
            self._start_clicks += 1
            return Decision([Action("click", target=Target("text", "START"))], thought="start the episode")
        if error is not None:
            self._retries += 1
            if self._retries > self.MAX_RETRIES:
                return Decision([Action("fail", text=f"an action failed: {error}")], thought=error)
        buttons, self._buttons = self._buttons, {n.name for n in nodes if n.role == "button" and n.name}
        interruption = self._interruption(buttons)
        if interruption is not None:  # a popup the instruction never mentioned: dismiss it, redo what it swallowed
            self._intents = self._before
            return Decision([Action("click", target=Target("role", interruption, role="button"))],
                            thought=f"dismiss the popup that appeared ({interruption!r}) and do that again")
        if self._intents is None:
            text = page_instruction(nodes)
            if text is None:
                return self._wait_or_fail("no instruction found on the page")
            self._read_instruction = text
            self._intents = parse_instruction(text)
        if not self._intents:
            if self._acted:
                if self._started and self._waits < self.MAX_WAITS:  # the page may still be scoring the episode
                    self._waits += 1
                    return Decision([Action("wait", seconds=self.WAIT_SECONDS)], thought="waiting for the page")
                return Decision([Action("done", text=f"done: {self._read_instruction or self.instruction}")])
            return Decision([Action("fail", text=f"cannot understand the instruction: {self._current_text()!r}")])
        try:
            actions, remaining = ground(without_instruction(nodes) if self.from_page else nodes, self._intents)
        except GroundingError as exc:
            place = self._next_place(nodes)
            if place is None:
                return self._wait_or_fail(str(exc))
            self._explored.add((place.role, place.name))
            target = Target("role", place.name, role=place.role)
            # a tab opens on a click; a menu item's submenu on hover, after the menu's delay
            look = [Action("click", target=target)] if place.role == "tab" else [
                Action("move", target=target), Action("wait", seconds=HOVER_SECONDS)]
            return Decision(look, thought=f"{exc}; looking in the {place.role} {place.name!r}")
        self._pending = remaining
        self._before = self._intents
        self._acted = True
        self._sent = len(episode.history)
        thought = f"{self._current_text()} -> {', '.join(_describe(a) for a in actions) or 'nothing to do'}"
        if not actions:  # e.g. "Select nothing": the intent is satisfied as the page stands
            self._intents, self._pending = remaining, None
            return self.decide(observation, episode) if self._intents else Decision(
                [Action("wait", seconds=0)], thought=thought)
        return Decision(actions, thought=thought)

    def _settle(self, episode: Episode) -> str | None:
        """Account for the last decision: drop the intents it did, or return its error so they are retried."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        if len(episode.history) > self._sent:
            record = episode.history[-1]
            failed = next((r for r in record.results if not r.ok), None)
            if failed is not None or len(record.results) < len(record.actions):
                return failed.error if failed is not None and failed.error else "not all actions ran"
        self._intents = pending
        return None

    def _next_place(self, nodes: list[AriaNode]) -> AriaNode | None:
        """Where to look next when the next intent clicks or selects something not on the page: a tab (or section
        header) not opened yet, else a menu item not pointed at yet (its submenu may hold it): "Switch between
        the tabs to find ...", "find and click on the item labeled ...". None when there is nowhere left."""
        if not self._intents or not isinstance(self._intents[0], Click | Choose):
            return None
        if len(self._explored) >= self.MAX_LOOKS:
            return None
        for role in ("tab", "menuitem"):
            fresh = [n for n in nodes if n.role == role and n.name and (role, n.name) not in self._explored
                     and not {"selected", "expanded", "disabled"} & set(n.attrs)]
            if fresh:
                return fresh[0]
        return None

    def _interruption(self, before: set[str]) -> str | None:
        """The dismissing button ("Cancel", "Close" ...) of a popup that appeared since the last step, when the
        instruction names no such button; None otherwise (or after ``MAX_DISMISSALS``)."""
        if not self._acted or self._before is None or self._dismissed >= self.MAX_DISMISSALS:
            return None
        said = (self._read_instruction or self.instruction).lower()
        new = [b for b in self._buttons - before if b.lower() in DISMISS_WORDS and b.lower() not in said]
        if not new:
            return None
        self._dismissed += 1
        return new[0]

    def _wait_or_fail(self, reason: str) -> Decision:
        if self._waits < self.MAX_WAITS:  # the page may still be loading or rendering
            self._waits += 1
            return Decision([Action("wait", seconds=self.WAIT_SECONDS)], thought=f"{reason}; waiting")
        return Decision([Action("fail", text=reason)], thought=reason)

    def _current_text(self) -> str:
        return self._read_instruction or self.instruction


def _describe(action: Action) -> str:
    what = action.target.describe() if action.target else (action.keys or "")
    if action.type == "type":
        return f"type {action.text!r}" + (f" into {what}" if what else "")
    return f"{action.type} {what}".strip()
