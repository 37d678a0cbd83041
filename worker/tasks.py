"""The Celery side of a worker: the ``lodestar.run_task`` task, per-process resources, and the task lease.

Run with ``lodestar worker`` (or ``celery -A worker.tasks worker -Q browser``). Each worker process (slot) owns one
Chromium, started on its first task and reused; each task gets a fresh browser context.

A task is run at most once at a time: the worker first claims it in Redis (``TaskStore.claim``), which sets a lease
that a background thread renews every ``lease_ttl / 3`` seconds. A message delivered again (visibility timeout,
requeue after a lost worker) finds the lease held and is retried later, or finds the lease expired and restarts the
task, up to ``max_attempts`` times.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.signals import worker_process_shutdown

from shared import webhooks
from shared.control import ControlChannel
from shared.queue import RUN_TASK, make_celery, task_ended
from shared.settings import Settings, load_settings
from shared.states import ExitCode, Status
from shared.store import TaskStore, now
from shared.tenants import Tenants
from worker.agents import Episode, PolicyError, StepRecord, make_policy
from worker.browser import BrowserHost
from worker.computer import Computer, Observation
from worker.loop import Outcome, run_episode

log = logging.getLogger(__name__)

settings = load_settings()
app = make_celery(settings)


@dataclass
class Runtime:
    """What one worker process keeps between tasks: settings, the store and its browser."""

    settings: Settings
    store: TaskStore
    browsers: BrowserHost
    worker_id: str


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, created on first use (after the prefork fork, so nothing is shared across children)."""
    global _runtime
    if _runtime is None or _runtime.worker_id.rsplit(":", 1)[1] != str(os.getpid()):
        _runtime = Runtime(settings, TaskStore.from_settings(settings), BrowserHost(settings),
                           f"{socket.gethostname()}:{os.getpid()}")
    return _runtime


@worker_process_shutdown.connect
def _close_browser(**_: Any) -> None:
    if _runtime is not None:
        _runtime.browsers.close()


class LeaseKeeper(threading.Thread):
    """Renews the worker's lease on a task every ``lease_ttl / 3`` seconds until stopped."""

    def __init__(self, store: TaskStore, task_id: str, worker_id: str):
        super().__init__(name=f"lease-{task_id}", daemon=True)
        self.store, self.task_id, self.worker_id = store, task_id, worker_id
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(self.store.settings.lease_ttl / 3, 0.5)
        while not self._stop_event.wait(interval):
            try:
                if not self.store.renew_lease(self.task_id, self.worker_id):
                    log.warning("lost the lease on %s", self.task_id)
            except Exception as exc:  # Redis briefly unreachable: try again next tick
                log.warning("lease renewal for %s failed: %s", self.task_id, exc)

    def stop(self) -> None:
        self._stop_event.set()


@app.task(name=RUN_TASK, bind=True, max_retries=None, acks_late=True)
def run_task(self: Any, task_id: str) -> str:
    """Claim and run one agent task to its end. Returns the claim outcome (for Flower)."""
    rt = runtime()
    outcome, status, attempts = rt.store.claim(task_id, rt.worker_id)
    if outcome in ("ended", "missing"):
        log.info("task %s is %s; nothing to do", task_id, status or "missing")
        return outcome
    if outcome == "deferred":
        log.info("task %s waits: its tenant is at its running limit", task_id)
        return outcome
    if outcome == "leased":
        raise self.retry(countdown=rt.settings.lease_ttl)
    if outcome == "lost":
        _end(rt.store, task_id, Outcome(ExitCode.WORKER_LOST, error=f"its worker was lost {attempts - 1} times"))
        return outcome
    if outcome == "started":
        webhooks.schedule(app, rt.store, task_id, "task.running")
    keeper = LeaseKeeper(rt.store, task_id, rt.worker_id)
    keeper.start()
    try:
        run_claimed(rt, task_id)
    finally:
        keeper.stop()
        rt.store.release_lease(task_id, rt.worker_id)
    return outcome


def run_claimed(rt: Runtime, task_id: str) -> Outcome:
    """Run a task this worker holds the lease on: open its environment, run the loop, record the end."""
    store = rt.store
    record = store.get(task_id)
    if record is None:
        return Outcome(ExitCode.FAILED, error="task record vanished")
    params = record.get("params") or {}
    episode = Episode(
        task_id=task_id, instruction=record["instruction"], kind=record["kind"], model=record.get("model") or "",
        temperature=record.get("temperature") or 0.2, system_prompt=params.get("system_prompt"),
        context=params.get("context") or [], max_steps=record["max_steps"],
    )
    started_at = record.get("started_at") or now()
    deadline = time.monotonic() + started_at + record["max_duration_seconds"] - now()

    try:
        policy = make_policy(record.get("agent_type"), episode)
    except PolicyError as exc:
        return _end(store, task_id, Outcome(ExitCode.FAILED, error=str(exc)))
    except Exception as exc:  # a bug in an agent must end the task, not leave it running
        log.exception("policy for %s failed to start", task_id)
        return _end(store, task_id, Outcome(ExitCode.POLICY_ERROR, error=f"{type(exc).__name__}: {exc}"))

    computer: Computer | None = None
    control = ControlChannel(store, task_id)
    try:
        try:
            computer = _open_computer(rt, record)
            if params.get("start_url"):
                computer.navigate(params["start_url"])
        except Exception as exc:
            log.exception("environment for %s failed to start", task_id)
            return _end(store, task_id, Outcome(ExitCode.ENVIRONMENT_ERROR, error=f"environment failed: {exc}"))

        def on_step(step: StepRecord, observation: Observation) -> bool:
            return _record_step(store, task_id, step, observation)

        first_step = (record.get("steps_taken") or 0) + 1
        try:
            outcome = run_episode(computer, policy, episode, control, on_step, deadline, first_step=first_step)
        except Exception as exc:  # the browser died under us, or a bug: the task fails, the worker lives on
            log.exception("task %s crashed", task_id)
            outcome = Outcome(ExitCode.ENVIRONMENT_ERROR, error=f"{type(exc).__name__}: {exc}")
        return _end(store, task_id, outcome)
    finally:
        control.close()
        if computer is not None:
            computer.close()


def _open_computer(rt: Runtime, record: dict[str, Any]) -> Computer:
    if record["kind"] != "browser":
        raise RuntimeError(f"this worker cannot run kind={record['kind']!r} tasks")
    return rt.browsers.open(record["viewport_width"], record["viewport_height"])


def _record_step(store: TaskStore, task_id: str, step: StepRecord, observation: Observation) -> bool:
    """Store the step's screenshot, bump ``steps_taken`` and append the ``step`` event in one round trip.
    Returns False when the task is no longer running or paused (cancelled under us)."""
    thought = (step.thought or "").splitlines()[0][:200] if step.thought else None
    event = {
        "type": "step", "task_id": task_id, "step": step.step, "ts": now(), "url": step.url,
        "actions": [a.to_dict() for a in step.actions],
        "results": [{k: v for k, v in vars(r).items() if v is not None} for r in step.results],
        "thought": step.thought, "messages": step.messages, "screenshot": {"step": step.step},
    }
    store.put_screenshot(task_id, step.step, observation.screenshot)
    applied = store.apply(
        task_id, allowed_from=(Status.RUNNING, Status.PAUSED), event=event,
        fields={"steps_taken": step.step, "last_screenshot_step": step.step, "message": thought,
                "current_url": step.url},
    )
    return applied.ok


def _end(store: TaskStore, task_id: str, outcome: Outcome) -> Outcome:
    result = store.finish(task_id, outcome.code, result=outcome.result, error=outcome.error)
    if not result.ok:
        log.info("task %s already ended as %s", task_id, result.status)
        return outcome
    tenant = store.redis.hget(store.key(task_id), "tenant")
    task_ended(app, store, task_id, tenant.decode() if isinstance(tenant, bytes) else None)
    return outcome


@app.task(name=webhooks.DELIVER_WEBHOOK, bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self: Any, task_id: str, delivery_id: str, event: str, attempt: int = 1) -> bool:
    """Deliver one webhook event; retried with backoff until a 2xx or ``webhook_max_attempts``."""
    rt = runtime()
    tenant = rt.store.redis.hget(rt.store.key(task_id), "tenant")
    if tenant is None:
        return False
    secret = Tenants(rt.store).webhook_secret(tenant.decode())  # type: ignore[union-attr]
    result = webhooks.deliver(rt.store, secret, task_id, delivery_id, event, attempt)
    if not result.ok and not (result.error or "").startswith("refused") and attempt < settings.webhook_max_attempts:
        raise self.retry(args=[task_id, delivery_id, event, attempt + 1], countdown=webhooks.backoff(attempt))
    return result.ok
