"""Task statuses, the one transition table that moves them, and the documented exit codes.

Every status write goes through :data:`TRANSITIONS` (enforced atomically in Redis by ``TaskStore``), so no code
path can move a task from ``completed`` back to ``running``.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(StrEnum):
    """Lifecycle of a task. ``queued`` -> ``running`` <-> ``paused`` -> one terminal status."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def ended(self) -> bool:
        """A terminal status: the task will never change again."""
        return self in TERMINAL


TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: frozenset({Status.QUEUED, Status.PAUSED, Status.COMPLETED, Status.FAILED, Status.CANCELLED,
                               Status.TIMED_OUT}),
    Status.PAUSED: frozenset({Status.QUEUED, Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.CANCELLED,
                              Status.TIMED_OUT}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.TIMED_OUT: frozenset(),
}
"""Allowed moves, from -> {to}. Paused tasks may end directly: a step in flight when the pause arrived may finish
the task, and cancel and the time limit apply while paused. Back to ``queued`` only when a task is requeued: its
worker was lost (the reaper), its worker shut down and handed it back, or a released paused task was resumed;
users' calls never requeue (``shared/control.py``)."""


def sources(to: Status) -> frozenset[Status]:
    """The statuses a task may move to ``to`` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if to in targets)


class ExitCode(IntEnum):
    """``exit_code`` of an ended task (null while it is queued, running or paused)."""

    COMPLETED = 0
    """The agent finished (``done``)."""
    FAILED = 1
    """The agent gave up (``fail``), its script or policy could not run, or an action error ended the task."""
    MAX_STEPS = 2
    """``max_steps`` steps ran without the agent finishing (status ``failed``)."""
    TIMED_OUT = 3
    """``max_duration_seconds`` of wall-clock time passed (status ``timed_out``)."""
    CANCELLED = 4
    """A user cancelled the task (status ``cancelled``)."""
    ENVIRONMENT_ERROR = 5
    """The browser or desktop could not start or crashed (status ``failed``)."""
    WORKER_LOST = 6
    """Its worker was lost and it had been started ``max_attempts`` times (status ``failed``)."""
    POLICY_ERROR = 7
    """The model or agent raised an error the loop could not recover from (status ``failed``)."""
    BUDGET_EXCEEDED = 8
    """A budget would be exceeded by the next model call: the task's ``max_cost_usd``, its batch's
    ``max_cost_usd`` or its tenant's daily budget; ``error`` names which (status ``failed``)."""
    REPLAY_DIVERGED = 9
    """A replay (``replay_of``) found the page no longer as recorded: another URL, or another element where a step
    clicked; ``error`` names the step (status ``failed``). See ``docs/trajectories.md``."""


EXIT_STATUS: dict[ExitCode, Status] = {
    ExitCode.COMPLETED: Status.COMPLETED,
    ExitCode.FAILED: Status.FAILED,
    ExitCode.MAX_STEPS: Status.FAILED,
    ExitCode.TIMED_OUT: Status.TIMED_OUT,
    ExitCode.CANCELLED: Status.CANCELLED,
    ExitCode.ENVIRONMENT_ERROR: Status.FAILED,
    ExitCode.WORKER_LOST: Status.FAILED,
    ExitCode.POLICY_ERROR: Status.FAILED,
    ExitCode.BUDGET_EXCEEDED: Status.FAILED,
    ExitCode.REPLAY_DIVERGED: Status.FAILED,
}
"""The terminal status each exit code ends in."""

PRIORITIES = ("high", "normal", "low")
"""Task priorities, highest first (their numbers on each broker: ``shared.queue.priority_of``)."""
