"""Running one claimed task: build its policy and environment, run the loop, record each step, record the end.

The Celery side (claiming, retries) is ``worker/tasks.py``; the loop itself is ``worker/loop.py``. Everything here
talks to Redis through the store only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from celery import Celery

from shared.control import ControlChannel
from shared.queue import task_ended
from shared.settings import Settings
from shared.states import ExitCode
from shared.store import TaskStore, now
from shared.task import Task
from worker.agents import make_policy
from worker.browser import BrowserHost
from worker.computer import Computer, Observation
from worker.egress import EgressRules, rules_for
from worker.loop import Outcome, run_episode
from worker.policy import Episode, PolicyError, StepRecord

log = logging.getLogger(__name__)


class Host(Protocol):
    """Owns the machines of one kind in a worker process (``BrowserHost``, ``DesktopHost``); started lazily."""

    def open(self, width: int, height: int, *, persistent: bool = False, owner: str = "",
             egress: EgressRules | None = None) -> Computer: ...
    def close(self) -> None: ...


@dataclass
class Runtime:
    """What one worker process keeps between tasks: its Celery app, settings, the store and its hosts by kind.
    ``worker_id`` is "host:pid"."""

    app: Celery
    settings: Settings
    store: TaskStore
    hosts: dict[str, Host]
    worker_id: str

    @property
    def browsers(self) -> BrowserHost:
        return cast(BrowserHost, self.hosts["browser"])


def episode_of(task: Task) -> Episode:
    """What the task's policy may read besides the observations."""
    return Episode(task_id=task.task_id, instruction=task.instruction, kind=task.kind, model=task.model,
                   temperature=task.temperature, system_prompt=task.system_prompt, context=list(task.context),
                   max_steps=task.max_steps)


def run_claimed(rt: Runtime, task_id: str) -> Outcome:
    """Run a task this worker holds the lease on: open its environment, run the loop, record the end.

    Never raises for the task's own failures (they become its outcome); a Redis error propagates (the Celery
    task retries)."""
    store = rt.store
    task = store.get(task_id)
    if task is None:
        return Outcome(ExitCode.FAILED, error="task record vanished")
    episode = episode_of(task)
    started_at = task.started_at or now()
    deadline = time.monotonic() + started_at + task.max_duration_seconds - now()

    try:
        policy = make_policy(task.agent_type, episode, rt.settings)
    except PolicyError as exc:
        return end(rt, task_id, Outcome(ExitCode.FAILED, error=str(exc)))
    except Exception as exc:  # a bug in an agent must end the task, not leave it running
        log.exception("policy for %s failed to start", task_id)
        return end(rt, task_id, Outcome(ExitCode.POLICY_ERROR, error=f"{type(exc).__name__}: {exc}"))

    computer: Computer | None = None
    control = ControlChannel(store, task_id)
    try:
        try:
            computer = _open_computer(rt, task)
            if task.start_url:
                computer.navigate(task.start_url)
        except Exception as exc:
            log.exception("environment for %s failed to start", task_id)
            return end(rt, task_id, Outcome(ExitCode.ENVIRONMENT_ERROR, error=f"environment failed: {exc}"))

        def on_step(step: StepRecord, observation: Observation) -> bool:
            return record_step(store, task_id, step, observation)

        try:
            outcome = run_episode(computer, policy, episode, control, on_step, deadline,
                                  first_step=task.steps_taken + 1)
        except Exception as exc:  # the browser died under us, or a bug: the task fails, the worker lives on
            log.exception("task %s crashed", task_id)
            outcome = Outcome(ExitCode.ENVIRONMENT_ERROR, error=f"{type(exc).__name__}: {exc}")
        return end(rt, task_id, outcome)
    finally:
        control.close()
        if computer is not None:
            computer.close()
        if task.kind == "browser":
            rt.browsers.warm()  # the next task's context, ready before its message arrives


def _open_computer(rt: Runtime, task: Task) -> Computer:
    host = rt.hosts.get(task.kind)
    if host is None:
        raise RuntimeError(f"this worker cannot run kind={task.kind!r} tasks")
    # a persistent desktop task leaves its session to the next task of the same tenant on the slot; the egress
    # proxy's rules switch to this task's as its environment opens
    return host.open(task.viewport_width, task.viewport_height, persistent=task.persistent, owner=task.tenant,
                     egress=rules_for(rt.store, task))


def record_step(store: TaskStore, task_id: str, step: StepRecord, observation: Observation) -> bool:
    """Store the step's screenshot, bump ``steps_taken`` and append the ``step`` event in one round trip (plus one
    read when the step has model usage). Returns False when the task is no longer running or paused (cancelled
    under us)."""
    thought = (step.thought or "").splitlines()[0][:200] if step.thought else None
    event: dict[str, Any] = {
        "type": "step", "task_id": task_id, "step": step.step, "ts": now(), "url": step.url,
        "actions": [a.to_dict() for a in step.actions],
        "results": [{k: v for k, v in vars(r).items() if v is not None} for r in step.results],
        "thought": step.thought, "messages": step.messages, "screenshot": {"step": step.step},
    }
    if step.usage is not None:  # model usage: this step's in the event, the task's running sums on the record
        event["usage"] = step.usage
    fields = {"steps_taken": step.step, "message": thought, "current_url": step.url}
    return store.record_step(task_id, step.step, observation.screenshot, fields, event, step.usage).ok


def end(rt: Runtime, task_id: str, outcome: Outcome) -> Outcome:
    """Record the task's end (status, exit code, result or error, the ``end`` event) and what follows it: its
    webhook and the start of a task its tenant's running limit held back. A task that already ended (cancelled
    meanwhile) keeps its first end."""
    result = rt.store.finish(task_id, outcome.code, result=outcome.result, error=outcome.error)
    if not result.ok:
        log.info("task %s already ended as %s", task_id, result.status)
        return outcome
    task = rt.store.get(task_id)
    task_ended(rt.app, rt.store, task_id, task.tenant if task else None)
    return outcome
