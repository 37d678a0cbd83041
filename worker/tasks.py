"""The Celery side of a worker: the ``lodestar.run_task`` task, per-process resources, and the task lease.

Run with ``lodestar worker`` (or ``celery -A worker.tasks worker -Q browser``). Each worker process (slot) owns one
Chromium, started on its first task and reused; each task gets a fresh browser context. A desktop worker
(``--kind desktop``) process owns one Xvfb display instead (``worker/desktop/``); each task gets a fresh session.

A task is run at most once at a time: the worker first claims it in Redis (``TaskStore.claim``), which sets a lease
that a background thread renews every ``lease_ttl / 3`` seconds. A message delivered again (visibility timeout,
requeue after a lost worker) finds the lease held and is retried later, or finds the lease expired and restarts the
task, up to ``max_attempts`` times.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol, cast

from celery.signals import worker_process_shutdown
from redis.exceptions import RedisError

from shared import webhooks
from shared.control import ControlChannel
from shared.queue import RUN_TASK, make_celery, task_ended
from shared.settings import Settings, load_settings
from shared.states import ExitCode
from shared.store import TaskStore, now
from shared.task import DEFAULT_TEMPERATURE
from shared.tenants import Tenants
from worker.agents import make_policy
from worker.browser import BrowserHost
from worker.computer import Computer, Observation
from worker.desktop import DesktopHost
from worker.loop import Outcome, run_episode
from worker.policy import Episode, PolicyError, StepRecord

log = logging.getLogger(__name__)

settings = load_settings()
app = make_celery(settings)


class Host(Protocol):
    """Owns the machines of one kind in a worker process (``BrowserHost``, ``DesktopHost``); started lazily."""

    def open(self, width: int, height: int) -> Computer: ...
    def close(self) -> None: ...


@dataclass
class Runtime:
    """What one worker process keeps between tasks: settings, the store and its hosts by task kind."""

    settings: Settings
    store: TaskStore
    hosts: dict[str, Host]
    worker_id: str

    @property
    def browsers(self) -> BrowserHost:
        return cast(BrowserHost, self.hosts["browser"])


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, created on first use (after the prefork fork, so nothing is shared across children)."""
    global _runtime
    if _runtime is None or _runtime.worker_id.rsplit(":", 1)[1] != str(os.getpid()):
        hosts: dict[str, Host] = {"browser": BrowserHost(settings), "desktop": DesktopHost(settings)}
        _runtime = Runtime(settings, TaskStore.from_settings(settings), hosts, f"{socket.gethostname()}:{os.getpid()}")
    return _runtime


@worker_process_shutdown.connect
def _close_hosts(**_: Any) -> None:
    if _runtime is not None:
        for host in _runtime.hosts.values():
            try:
                host.close()
            except Exception:  # shutting down: close the others anyway
                log.exception("closing %s failed", type(host).__name__)


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
    """Claim and run one agent task to its end. Returns the claim outcome (for Flower).

    A Redis error anywhere on the way (a failover, a dropped connection) retries the message after ``lease_ttl``
    instead of acknowledging it, so no task is left queued or running with nobody to finish it; the claim's
    attempt limit bounds the retries of a task that was already running.
    """
    rt = runtime()
    try:
        return _claim_and_run(self, rt, task_id)
    except RedisError as exc:
        log.warning("Redis failed while running %s (%s); retrying in %s s", task_id, exc, rt.settings.lease_ttl)
        raise self.retry(countdown=rt.settings.lease_ttl, max_retries=50, exc=exc) from exc


def _claim_and_run(self: Any, rt: Runtime, task_id: str) -> str:
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
        temperature=DEFAULT_TEMPERATURE if record.get("temperature") is None else record["temperature"],
        system_prompt=params.get("system_prompt"),
        context=params.get("context") or [], max_steps=record["max_steps"],
    )
    started_at = record.get("started_at") or now()
    deadline = time.monotonic() + started_at + record["max_duration_seconds"] - now()

    try:
        policy = make_policy(record.get("agent_type"), episode, rt.settings)
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
        if record["kind"] == "browser":
            rt.browsers.warm()  # the next task's context, ready before its message arrives


def _open_computer(rt: Runtime, record: dict[str, Any]) -> Computer:
    host = rt.hosts.get(record["kind"])
    if host is None:
        raise RuntimeError(f"this worker cannot run kind={record['kind']!r} tasks")
    width, height = record["viewport_width"], record["viewport_height"]
    if isinstance(host, DesktopHost):  # a persistent task leaves its desktop session to the next task on the slot
        return host.open(width, height, persistent=bool(record.get("persistent")), owner=record.get("tenant") or "")
    return host.open(width, height)


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
    fields: dict[str, Any] = {"steps_taken": step.step, "message": thought,
                              "current_url": step.url}
    if step.usage is not None:  # model usage: this step's in the event, the task's running sums on the record
        event["usage"] = step.usage
        fields.update(_add_usage(store, task_id, step.usage))
    return store.record_step(task_id, step.step, observation.screenshot, fields, event).ok


def _add_usage(store: TaskStore, task_id: str, step_usage: dict[str, Any]) -> dict[str, Any]:
    """The record fields ``usage`` ({input_tokens, output_tokens, total_tokens, calls}) and ``cost_usd`` (USD, None
    while no step had a price) after adding one step's usage. Read-modify-write is safe: one worker holds the task."""
    raw = cast(list[bytes | None], store.redis.hmget(store.key(task_id), ["usage", "cost_usd"]))
    total = json.loads(raw[0]) if raw[0] else {}
    for name in ("input_tokens", "output_tokens", "total_tokens", "calls"):
        total[name] = int(total.get(name) or 0) + int(step_usage.get(name) or 0)
    cost = float(raw[1]) if raw[1] else None
    if step_usage.get("cost_usd") is not None:
        cost = round((cost or 0.0) + float(step_usage["cost_usd"]), 8)
    return {"usage": total, "cost_usd": cost}


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
