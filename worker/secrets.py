"""The worker's side of task secrets (``shared/secrets.py``): a computer that types a secret's value where the agent
wrote ``{{name}}`` and shows the agent ``{{name}}`` where the page shows the value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from shared.secrets import redact, substitute
from worker.computer import Computer, Observation


class SecretsComputer:
    """Wraps a ``Computer`` for a task with secrets: ``type`` substitutes ``{{name}}`` placeholders; ``observe``
    redacts the values from the page's accessibility text, title and URL (a screenshot is pixels: a value shown in
    plain text on the page is visible there; password fields are masked). Every other call goes through unchanged.
    """

    def __init__(self, computer: Computer, values: Mapping[str, str]):
        self._computer = computer
        self._values = dict(values)
        self.width, self.height = computer.width, computer.height

    def type(self, text: str) -> None:
        self._computer.type(substitute(text, self._values))

    def observe(self, accessibility: bool = True) -> Observation:
        seen = self._computer.observe(accessibility)
        return replace(seen, url=redact(seen.url, self._values), title=redact(seen.title, self._values),
                       accessibility=redact(seen.accessibility, self._values) if seen.accessibility else None)

    def redact(self, text: str) -> str:
        """``text`` with the task's secret values replaced by their placeholders (for step records)."""
        return redact(text, self._values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._computer, name)
