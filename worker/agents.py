"""The decide step: the ``Policy`` protocol, the episode context a policy sees, and the offline agents' registry.

A policy turns an ``Observation`` plus the episode so far into a ``Decision`` (one or more ``Action``s and an
optional thought). Offline agents ship here so Lodestar runs with no model provider:

- ``scripted``: the instruction is a script, one step per line (grammar in :class:`ScriptedPolicy`).
- ``heuristic``: a rule-based reader of plain-English instructions (``worker/heuristic.py``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.settings import Settings, load_settings
from worker.computer import Action, ActionResult, Observation, Target


class PolicyError(Exception):
    """The policy cannot go on. Raised while building the policy (a bad script line, an unknown agent), the task
    fails with exit code 1; raised by ``decide`` (a model error after retries), with exit code 7."""


@dataclass(frozen=True)
class Decision:
    """What to do next. A ``done``/``fail`` action ends the episode after the actions before it have run.

    ``error``: the policy could not turn (part of) the model's answer into actions (malformed, or an action with no
    equivalent): the listed ``actions`` run, then the step counts as a failed step with this error (the loop's
    ``MAX_FAILED_STEPS`` ends a task that keeps failing). ``ask_user``: a question for the user (a safety check, a
    model's ``call_user``): the loop pauses the task with it and runs ``actions`` once the user resumes or answers
    with a message. ``usage``: this step's model usage ``{input_tokens, output_tokens, total_tokens, calls,
    cost_usd}`` (tokens, calls, USD or None), summed on the task record by the worker.
    """

    actions: list[Action]
    thought: str | None = None
    error: str | None = None
    ask_user: str | None = None
    usage: dict[str, Any] | None = None


@dataclass
class StepRecord:
    """One finished step as the policy and the events see it."""

    step: int
    actions: list[Action]
    results: list[ActionResult]
    thought: str | None
    url: str
    messages: list[str] = field(default_factory=list)
    """Injected user messages delivered to the policy at this step."""
    usage: dict[str, Any] | None = None
    """The decision's model usage (see :class:`Decision`), None for offline agents."""


@dataclass
class Episode:
    """Everything a policy may read about its task besides the current observation.

    ``messages`` holds every injected message so far (oldest first); ``new_messages`` those not yet shown to the
    policy, delivered at this step. ``context`` is the task's prior turns (``[{"role", "content"}]``).
    """

    task_id: str
    instruction: str
    kind: str = "browser"
    model: str = ""
    temperature: float = 0.2
    system_prompt: str | None = None
    context: list[dict[str, str]] = field(default_factory=list)
    max_steps: int = 100
    history: list[StepRecord] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    new_messages: list[str] = field(default_factory=list)


class Policy(Protocol):
    """Chooses the next actions. ``needs_accessibility`` asks the computer for the ARIA snapshot each step."""

    @property
    def needs_accessibility(self) -> bool:
        """Whether the next observation should carry the ARIA snapshot (it costs ~16 ms in a browser)."""
        ...

    def decide(self, observation: Observation, episode: Episode) -> Decision: ...


# --- scripted ------------------------------------------------------------------------------------------------------
_Q = r'"((?:[^"\\]|\\.)*)"'  # a double-quoted string with backslash escapes
_GRAMMAR: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"goto\s+(\S+)", re.I), "goto"),
    (re.compile(rf"(click|double_click|right_click)\s+{_Q}", re.I), "click_text"),
    (re.compile(r"(click|double_click|right_click)\s+(\d+)\s*,\s*(\d+)", re.I), "click_xy"),
    (re.compile(rf"type\s+{_Q}\s+into\s+{_Q}", re.I), "type_into"),
    (re.compile(rf"type\s+{_Q}", re.I), "type"),
    (re.compile(rf"select\s+{_Q}\s+in\s+{_Q}", re.I), "select"),
    (re.compile(r"press\s+(\S+)", re.I), "press"),
    (re.compile(r"scroll\s+(down|up)(?:\s+(\d+))?", re.I), "scroll"),
    (re.compile(r"wait\s+(\d+(?:\.\d+)?)", re.I), "wait"),
    (re.compile(rf"expect\s+{_Q}", re.I), "expect"),
    (re.compile(rf"done(?:\s+{_Q})?", re.I), "done"),
    (re.compile(rf"fail(?:\s+{_Q})?", re.I), "fail"),
]
SCRIPT_COMMANDS = ("goto", "click", "double_click", "right_click", "type", "select", "press", "scroll", "wait",
                   "expect", "done", "fail")


def _unquote(s: str) -> str:
    return str(json.loads(f'"{s}"'))


def _normalize_text(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def parse_script(script: str) -> list[tuple[int, str, Action]]:
    """Parse a scripted instruction into ``(line number, command, Action)`` triples.

    Grammar, one step per line (blank lines and ``#`` comments skipped)::

        goto <url>                  click "<text or accessible name>"    click <x>,<y>
        type "<text>"               type "<text>" into "<label or placeholder>"
        select "<option>" in "<label>"                 press <Key or Ctrl+Key>
        scroll down|up [pixels]     wait <seconds>     expect "<text>"
        done ["<result>"]           fail ["<reason>"]

    ``expect`` becomes a no-op action the policy checks against the page text (see :class:`ScriptedPolicy`).

    Raises:
        PolicyError: a line matches no command; the message names the line number and its text.
    """
    steps: list[tuple[int, str, Action]] = []
    for number, raw in enumerate(script.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for pattern, command in _GRAMMAR:
            m = pattern.fullmatch(line)
            if m:
                try:
                    steps.append((number, command, _to_action(command, m)))
                except ValueError as exc:  # a bad backslash escape in a quoted string
                    raise PolicyError(f"script line {number} has a bad quoted string: {line!r} ({exc})") from None
                break
        else:
            raise PolicyError(
                f"script line {number} is not a step: {line!r} (commands: {', '.join(SCRIPT_COMMANDS)})"
            )
    return steps


def _to_action(command: str, m: re.Match[str]) -> Action:
    g = m.groups()
    match command:
        case "goto":
            return Action("navigate", url=g[0])
        case "click_text":
            return Action(g[0].lower(), target=Target("text", _unquote(g[1])))  # type: ignore[arg-type]
        case "click_xy":
            return Action(g[0].lower(), x=int(g[1]), y=int(g[2]))  # type: ignore[arg-type]
        case "type_into":
            return Action("type", text=_unquote(g[0]), target=Target("label", _unquote(g[1])))
        case "type":
            return Action("type", text=_unquote(g[0]))
        case "select":
            return Action("select", text=_unquote(g[0]), target=Target("label", _unquote(g[1])))
        case "press":
            return Action("key", keys=g[0])
        case "scroll":
            amount = int(g[1] or 500)
            return Action("scroll", dy=amount if g[0].lower() == "down" else -amount)
        case "wait":
            return Action("wait", seconds=float(g[0]))
        case "expect":
            return Action("wait", text=_unquote(g[0]))
        case "done":
            return Action("done", text=_unquote(g[0]) if g[0] is not None else None)
        case "fail":
            return Action("fail", text=_unquote(g[0]) if g[0] is not None else "the script failed")
    raise AssertionError(command)


class ScriptedPolicy:
    """Replays a script deterministically, one line per step (grammar: :func:`parse_script`).

    It asks for the page's ARIA snapshot only when the next line is an ``expect`` (the snapshot costs ~16 ms).
    ``expect "<text>"`` looks for the text (case- and whitespace-insensitive) in the page's ARIA snapshot and title;
    if absent it waits and looks again (``expect_poll`` seconds at first, growing by half each time up to 1 s; each
    look is a step: about 14 for the default 10 s), up to ``expect_timeout`` seconds, then fails the task naming
    the line. A step whose action fails (an element not found, a navigation
    refused) fails the task with the line and the error. A script that runs out without ``done`` completes with no
    result.
    """

    def __init__(self, script: str, expect_timeout: float = 10.0, expect_poll: float = 0.2):
        self.steps = parse_script(script)
        self._next = 0
        self._expect_polls = 0
        self._expect_since = 0.0
        self._expect_timeout = expect_timeout
        self._poll = expect_poll

    @property
    def needs_accessibility(self) -> bool:
        return self._next < len(self.steps) and self.steps[self._next][1] == "expect"

    def decide(self, observation: Observation, episode: Episode) -> Decision:
        last = episode.history[-1] if episode.history else None
        if last is not None and any(not r.ok for r in last.results):
            error = next(r.error for r in last.results if not r.ok)
            return Decision([Action("fail", text=f"{last.thought}: {error}")])
        if self._next >= len(self.steps):
            return Decision([Action("done")], thought="end of script")
        number, command, action = self.steps[self._next]
        if command == "expect":
            wanted = action.text or ""
            page_text = _normalize_text(f"{observation.title}\n{observation.accessibility or ''}")
            if _normalize_text(wanted) not in page_text:
                if self._expect_polls == 0:
                    self._expect_since = time.monotonic()
                elif time.monotonic() - self._expect_since >= self._expect_timeout:
                    reason = f'line {number}: expected text "{wanted}" is not on the page'
                    return Decision([Action("fail", text=reason)])
                pause = min(1.0, self._poll * 1.5 ** self._expect_polls)
                self._expect_polls += 1
                return Decision([Action("wait", seconds=pause)], thought=f'line {number}: waiting for "{wanted}"')
            self._expect_polls = 0
            self._next += 1
            return Decision([Action("wait", seconds=0)], thought=f'line {number}: found "{wanted}"')
        self._next += 1
        return Decision([action], thought=f"line {number}: {command}")


# --- registry --------------------------------------------------------------------------------------------------------
def _heuristic(episode: Episode) -> Policy:
    from worker.heuristic import HeuristicPolicy

    return HeuristicPolicy(episode.instruction)


POLICIES: dict[str, Callable[[Episode], Policy]] = {
    "scripted": lambda episode: ScriptedPolicy(episode.instruction),
    "heuristic": _heuristic,
}
"""Offline agents by ``agent_type``. Model-backed policies are chosen by ``model`` (``worker/providers``)."""

OFFLINE_AGENTS = tuple(POLICIES)


def make_policy(agent_type: str | None, episode: Episode, settings: Settings | None = None, **_: Any) -> Policy:
    """Build the policy for a task: the offline agent named ``agent_type``, else the provider adapter serving
    ``episode.model`` (``shared/models.py`` registry, ``worker/providers``), configured from ``settings``
    (default: :func:`shared.settings.load_settings`).

    Raises:
        PolicyError: no offline agent is named ``agent_type`` and no provider serves the model (or its SDK
            cannot be set up, e.g. no API key), or the agent rejects the instruction (a bad script line).
    """
    factory = POLICIES.get(agent_type or "")
    if factory is not None:
        return factory(episode)
    if not agent_type:
        from worker.providers import make_model_policy

        return make_model_policy(episode, settings or load_settings())
    raise PolicyError(
        f"no policy for agent_type={agent_type!r} model={episode.model!r}; offline agents: {', '.join(POLICIES)}"
    )
