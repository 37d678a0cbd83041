"""The decide step's types: the ``Policy`` protocol and what a policy reads and returns.

A leaf module: offline agents (``worker/scripted.py``, ``worker/heuristic/``), the model adapters
(``worker/providers/``), the loop and the registry (``worker/agents.py``) all import it, and it imports only the
action vocabulary (``worker/computer.py``).

A policy turns an ``Observation`` plus the ``Episode`` so far into a ``Decision`` (one or more ``Action``s and an
optional thought); the loop records each step as a ``StepRecord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.models import ProviderLimit
from shared.states import ExitCode
from shared.task import DEFAULT_TEMPERATURE
from worker.computer import Action, ActionResult, Observation

__all__ = ["CallEstimate", "Decision", "Episode", "Meter", "Policy", "PolicyError", "StepRecord"]


class PolicyError(Exception):
    """The policy cannot go on. Raised while building the policy (a bad script line, an unknown agent), the task
    fails with exit code 1; raised by ``decide``, with ``code``: 7 (a model error after retries) unless said
    otherwise (8: a budget would be exceeded; 4 or 3: cancelled or timed out while waiting for a rate limit)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.POLICY_ERROR):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Decision:
    """What to do next. A ``done``/``fail`` action ends the episode after the actions before it have run.

    ``error``: the policy could not turn (part of) the model's answer into actions (malformed, or an action with no
    equivalent): the listed ``actions`` run, then the step counts as a failed step with this error (the loop's
    ``MAX_FAILED_STEPS`` ends a task that keeps failing). ``ask_user``: a question for the user (a safety check, a
    model's ``call_user``): the loop pauses the task with it and runs ``actions`` once the user resumes or answers
    with a message. ``usage``: this step's model usage ``{input_tokens, output_tokens, total_tokens, calls,
    cost_usd}`` (tokens, calls, USD or None), summed on the task record by the worker. ``native``: the model's
    own action(s) the ``actions`` were read from (its tool calls, or its action text), as JSON, for trajectories;
    None for offline agents.
    """

    actions: list[Action]
    thought: str | None = None
    error: str | None = None
    ask_user: str | None = None
    usage: dict[str, Any] | None = None
    native: Any = None


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
    native: Any = None
    """The model's native action(s) (see :class:`Decision`), None for offline agents."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds the step spent observing, deciding and acting: ``observe_ms``, ``decide_ms``, ``act_ms``."""
    elements: list[dict[str, str] | None] = field(default_factory=list)
    """What each click of the step hit, in order: ``{"role", "name"}`` from the accessibility tree (None: nothing
    named there); filled in by the worker (``worker/replay.py``)."""
    human: bool = False
    """A human took over (the console, while the task was paused): the step's one action is the user's, and its
    screenshot was taken after it."""
    request_id: str | None = None
    """The id the API gave a human action (POST /agent/tasks/{id}/actions waits for the step carrying it)."""


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
    temperature: float = DEFAULT_TEMPERATURE
    system_prompt: str | None = None
    context: list[dict[str, str]] = field(default_factory=list)
    max_steps: int = 100
    history: list[StepRecord] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    new_messages: list[str] = field(default_factory=list)
    output_schema: dict[str, Any] | None = None
    """The JSON Schema the final answer must match (``shared/output_schema.py``), None for a text answer."""


@dataclass(frozen=True)
class CallEstimate:
    """What the next model call is expected to use: tokens, and USD at the model's price (None: no price)."""

    input_tokens: int
    output_tokens: int
    cost_usd: float | None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Meter(Protocol):
    """What a model policy reports its calls to (``worker/metering.py``; the worker injects one per task).

    ``before_call`` may wait (a provider rate limit: ``limit``) and raises ``PolicyError`` with ``code`` 8 when a
    budget would be exceeded by ``estimate`` (or 4 / 3 when the task is cancelled or runs out of time while it
    waits); ``after_call`` records ``usage`` (``Decision.usage``'s shape) as the call returns; ``blocked`` passes on
    a provider's ``retry-after`` (seconds) to every worker calling ``limit``'s scope.
    """

    def before_call(self, limit: ProviderLimit, estimate: CallEstimate) -> None: ...
    def after_call(self, limit: ProviderLimit, usage: dict[str, Any], estimate: CallEstimate) -> None: ...
    def blocked(self, limit: ProviderLimit, seconds: float) -> None: ...


class Policy(Protocol):
    """Chooses the next actions. ``needs_accessibility`` asks the computer for the ARIA snapshot each step."""

    @property
    def needs_accessibility(self) -> bool:
        """Whether the next observation should carry the ARIA snapshot (it costs ~16 ms in a browser)."""
        ...

    def decide(self, observation: Observation, episode: Episode) -> Decision: ...
