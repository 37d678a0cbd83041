"""The ``scripted`` offline agent: the instruction is a script, one step per line, replayed deterministically.

Grammar in :func:`parse_script`; behaviour (``expect`` polling, failures naming the line) in :class:`ScriptedPolicy`.
"""

from __future__ import annotations

import json
import re
import time

from worker.computer import Action, Observation, Target
from worker.policy import Decision, Episode, PolicyError

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
    (re.compile(r"done(?:\s+(.+))?", re.I), "done"),
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
        done [<JSON value>]         fail ["<reason>"]

    ``done``'s value is any JSON value: a string (``done "found it"``: the result is its text) or, for a task with
    an ``output_schema``, the structured answer (``done {"name": "ada", "n": 3}``), validated against it.

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
                except ValueError as exc:  # a bad backslash escape in a quoted string, or done's value not JSON
                    what = "a value that is not JSON" if command == "done" else "a bad quoted string"
                    raise PolicyError(f"script line {number} has {what}: {line!r} ({exc})") from None
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
            if g[0] is None:
                return Action("done")
            value = json.loads(g[0])  # a JSON value: "text", {"name": "ada"}, [1, 2], 3 (ValueError otherwise)
            return Action("done", text=value if isinstance(value, str) else g[0].strip(), value=value)
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
