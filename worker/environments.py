"""A task's saved environment on the worker side: the state to restore when its environment opens, and saving the
state back when a ``persistent`` task completes (records: ``shared/store/environments.py``; blobs in the artifact
store, so any worker machine of the kind restores them).

What a state is depends on the kind: a browser's Playwright storage state (``BrowserComputer.save_state``), a
desktop session's HOME as a tar.gz (``DesktopComputer.save_state``, ``worker/desktop/homes.py``).
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from shared.store import TaskStore
from shared.task import Task

log = logging.getLogger(__name__)


@runtime_checkable
class Saves(Protocol):
    """A computer whose state can be saved (the browser and desktop computers)."""

    def save_state(self) -> bytes: ...


def state_to_restore(store: TaskStore, task: Task) -> bytes | None:
    """The saved state the task starts from: its ``environment_id``'s last save, or None (no environment, or
    nothing saved in it yet: a fresh environment).

    Raises:
        redis.RedisError, shared.artifacts.ArtifactError: a store is unreachable (the environment fails to start).
    """
    if not task.environment_id:
        return None
    env = store.environments.get(task.tenant, task.environment_id)
    if env is None:  # deleted (or expired) after the submit: the task starts fresh
        log.warning("task %s: environment %s is gone; starting fresh", task.task_id, task.environment_id)
        return None
    return store.environments.state(env)


def save(store: TaskStore, task: Task, computer: object) -> str | None:
    """Save the computer's state into the task's environment (a persistent task that completed). Returns None when
    saved, else why not (the task still completes; the reason goes in its ``error``). Never raises."""
    if not task.environment_id or not isinstance(computer, Saves):
        return "this environment cannot be saved"
    try:
        data = computer.save_state()
        why = store.environments.save(task.environment_id, task.tenant, task.task_id, data)
    except Exception as exc:  # the browser died, HOME unreadable, a store unreachable: the task's work is done
        log.exception("task %s: saving environment %s failed", task.task_id, task.environment_id)
        why = f"{type(exc).__name__}: {exc}"
    if why is None:
        log.info("task %s: saved environment %s (%d bytes)", task.task_id, task.environment_id, len(data))
        return None
    return f"environment {task.environment_id} not saved: {why}"
