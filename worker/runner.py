"""Running one claimed task: build its policy and environment, run the loop, record each step, and see it to one of
four ends: ended (recorded), handed back (its worker shuts down, or it stayed paused too long), given up (the lease
was lost: someone else owns it now), or requeued for another attempt after its environment crashed.

The Celery side (claiming, dropping duplicate messages) is ``worker/tasks.py``; the loop itself is ``worker/loop.py``.
Everything here talks to Redis through the store only, and every write for the task checks that this worker still
holds its lease (fencing).
"""

from __future__ import annotations

import gzip
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from redis.exceptions import RedisError

from shared import logs
from shared.artifacts import aria_name
from shared.control import ControlChannel, ControlState, HandBack
from shared.queue import Dispatcher, task_ended
from shared.secrets import SecretsError, redact, redact_value, unseal
from shared.settings import Settings
from shared.states import EXIT_STATUS, ExitCode
from shared.store import LeaseLost, TaskStore, now
from shared.task import Task
from shared.trajectory import step_events
from worker import environments, lifecycle, metrics
from worker.agents import make_policy
from worker.browser import BrowserHost
from worker.computer import Computer, Observation
from worker.egress import EgressRules, rules_for
from worker.lease import LeaseKeeper
from worker.loop import Outcome, run_episode
from worker.metering import TaskMeter
from worker.policy import Episode, PolicyError, StepRecord
from worker.replay import ElementProbe, RecordedStep, ReplayPolicy
from worker.secrets import SecretsComputer

log = logging.getLogger(__name__)


class Host(Protocol):
    """Owns the machines of one kind in a worker process (``BrowserHost``, ``DesktopHost``); started lazily."""

    def open(self, width: int, height: int, *, persistent: bool = False, owner: str = "",
             egress: EgressRules | None = None, state: bytes | None = None) -> Computer: ...
    def close(self) -> None: ...


@dataclass
class Runtime:
    """What one worker process keeps between tasks: the dispatcher (its Celery app and store), settings, and its
    hosts by kind. ``worker_id`` is "host:pid"."""

    dispatcher: Dispatcher
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
                   max_steps=task.max_steps, output_schema=task.output_schema)


class Guard:
    """The checks made at every checkpoint of a task's loop (``shared.control.Guard``): the lease is still held,
    the worker is not stopping past its grace, the task has not stayed paused past ``pause_timeout``."""

    def __init__(self, keeper: LeaseKeeper, settings: Settings):
        self._keeper = keeper
        self._settings = settings
        self._paused_since: float | None = None

    def __call__(self, state: ControlState) -> None:
        if self._keeper.lost.is_set():
            raise LeaseLost("the lease on the task expired")
        if state.stop:
            return  # ended by someone else: the loop ends it its own way
        stopping = lifecycle.stopping_for()
        if stopping is not None and (state.paused or stopping >= self._settings.shutdown_grace):
            raise HandBack("its worker shut down; it starts again on another worker")
        if not state.paused:
            self._paused_since = None
            return
        if state.actions:  # a user taking over is at the task: the pause timeout counts from their last action
            self._paused_since = None
        self._paused_since = self._paused_since or time.monotonic()
        limit = self._settings.pause_timeout
        if limit > 0 and time.monotonic() - self._paused_since >= limit:
            end = self._settings.pause_timeout_action == "end"
            raise HandBack(f"paused for longer than LODESTAR_PAUSE_TIMEOUT ({limit:g} s)"
                           + ("" if end else "; resume it to start it again"), end=end)


def run_claimed(rt: Runtime, task_id: str) -> str:
    """Run a task this worker has just claimed (it holds the lease) to one of its ends; returns which: "ended",
    "handed back", "released", "requeued", "lost" or "redis" (Redis stayed unreachable: the lease expires and the
    reaper requeues the task). Never raises for the task's own failures."""
    store = rt.store
    task = store.get(task_id)
    if task is None:
        return "lost"
    logs.bind(tenant=task.tenant, attempt=task.attempt, kind=task.kind, agent=task.agent_type or task.model,
              model=None if task.agent_type else task.model)
    keeper = LeaseKeeper(store, task_id, rt.worker_id)
    keeper.start()
    try:
        return _run(rt, task, keeper)
    except LeaseLost as exc:
        log.warning("task %s: %s; another worker owns it now", task_id, exc)
        try:  # or nobody: the writes of its claim were lost with a Redis crash, and this message was its last
            if store.recovery.redispatch(task_id):
                rt.dispatcher.dispatch([task_id])
        except RedisError:
            pass
        return "lost"
    except RedisError as exc:
        log.error("task %s: Redis unreachable (%s); its lease will expire and it will be requeued", task_id, exc)
        return "redis"
    finally:
        keeper.stop()


def _run(rt: Runtime, task: Task, keeper: LeaseKeeper) -> str:
    task_id = task.task_id
    try:
        secrets = unseal(task.sealed_secrets, rt.settings.secrets_key) if task.sealed_secrets else {}
    except SecretsError as exc:
        return end(rt, task, Outcome(ExitCode.FAILED, error=f"cannot open the task's secrets: {exc}"))
    episode = episode_of(task)
    started_at = task.started_at or now()
    deadline = time.monotonic() + started_at + task.max_duration_seconds - now()
    computer: Computer | None = None
    control = ControlChannel(rt.store, task_id, guard=Guard(keeper, rt.settings), on_notice=metrics.observe_control)
    try:
        meter = TaskMeter(rt.store, task, rt.worker_id, control.poll, deadline)
        try:
            policy = replay_policy(rt.store, task) if task.replay_of else make_policy(
                task.agent_type, episode, rt.settings, meter=meter)
        except PolicyError as exc:
            return end(rt, task, Outcome(ExitCode.FAILED, error=str(exc)))
        except Exception as exc:  # a bug in an agent must end the task, not leave it running
            log.exception("policy for %s failed to start", task_id)
            return end(rt, task, Outcome(ExitCode.POLICY_ERROR, error=f"{type(exc).__name__}: {exc}"))
        try:
            computer = _open_computer(rt, task)
            if task.start_url:
                computer.navigate(task.start_url)
        except Exception as exc:
            log.exception("environment for %s failed to start", task_id)
            return _environment_failed(rt, task, f"environment failed: {exc}")
        probe = ElementProbe(computer, check=policy.check_element if isinstance(policy, ReplayPolicy) else None)
        if isinstance(policy, ReplayPolicy):
            policy.settle = probe.settle_url
        agent_computer = cast(Computer, SecretsComputer(cast(Computer, probe), secrets) if secrets else probe)

        def on_step(step: StepRecord, observation: Observation) -> bool:
            step.elements = probe.take()
            metrics.observe_step(task.kind, step.timings)
            if secrets:  # the values never reach a record, even when an error or the page quotes them
                step = redacted(step, secrets)  # (the observation's text was redacted as it was made)
            return record_step(rt.store, task, rt.worker_id, step, observation)

        first = task.steps_taken + 1  # step numbers go on across attempts; each attempt has max_steps steps
        try:  # offline agents and replays cannot answer again
            retries = 0 if task.agent_type or task.replay_of else rt.settings.output_schema_retries
            outcome = run_episode(agent_computer, policy, episode, control, on_step, deadline, first_step=first,
                                  last_step=first + task.max_steps - 1, answer_retries=retries)
        except HandBack as back:
            return _hand_back(rt, task, back)
        except (LeaseLost, RedisError):
            raise
        except Exception as exc:  # the browser or display died under us, or a bug: the worker lives on
            if lifecycle.STOPPING.is_set():  # killed with us (SIGTERM to the whole process group): not its fault
                return _hand_back(rt, task, HandBack("its worker shut down; it starts again on another worker"))
            log.exception("task %s crashed", task_id)
            return _environment_failed(rt, task, f"{type(exc).__name__}: {exc}")
        if secrets:
            outcome = replace(outcome, result=redact_value(outcome.result, secrets),
                              error=redact(outcome.error, secrets) if outcome.error else None)
        # a completed persistent task saves its environment before its end is recorded (a task started once the
        # end is seen starts from it), unless this worker lost the task meanwhile (another attempt runs it now)
        if task.persistent and outcome.code == ExitCode.COMPLETED and not keeper.lost.is_set():
            unsaved = environments.save(rt.store, task, computer)
            if unsaved:
                outcome = replace(outcome, error=unsaved)
        return end(rt, task, outcome)
    finally:
        control.close()
        if computer is not None:
            computer.close()
        if task.kind == "browser" and not lifecycle.STOPPING.is_set():
            rt.browsers.warm()  # the next task's context, ready before its message arrives


def replay_policy(store: TaskStore, task: Task) -> ReplayPolicy:
    """The policy of a replay (``task.replay_of``): the recorded task's steps (its ``step`` events), read now.

    Raises:
        PolicyError: the recorded task is gone (expired) or is another tenant's, or its steps do not parse.
    """
    source_id = task.replay_of or ""
    source = store.get(source_id)
    if source is None or source.tenant != task.tenant:
        raise PolicyError(f"replay_of: the recorded task {source_id} does not exist (or expired)")
    try:
        steps = [RecordedStep.from_event(e) for e in step_events(store, source_id)]
    except (KeyError, ValueError) as exc:
        raise PolicyError(f"replay_of: the recording of {source_id} cannot be replayed: {exc}") from None
    return ReplayPolicy(source_id, steps, start=task.steps_taken)


def _open_computer(rt: Runtime, task: Task) -> Computer:
    host = rt.hosts.get(task.kind)
    if host is None:
        raise RuntimeError(f"this worker cannot run kind={task.kind!r} tasks")
    # a task with an environment_id starts from its saved state (any worker of the kind: the blob is in the artifact
    # store); a persistent task's state is saved when it completes, so nothing is left on the slot for the next task
    # (a desktop session ends with its task, running programs included); the egress proxy's rules switch to this
    # task's as its environment opens
    return host.open(task.viewport_width, task.viewport_height, owner=task.tenant, egress=rules_for(rt.store, task),
                     state=environments.state_to_restore(rt.store, task))


def redacted(step: StepRecord, secrets: dict[str, str]) -> StepRecord:
    """``step`` with every secret value in its thought, URL, results' errors, clicked elements' names, typed text
    (a user's, in a takeover: an agent's holds the ``{{name}}`` it wrote) and messages replaced by its
    ``{{name}}``."""
    results = [replace(r, error=redact(r.error, secrets)) if r.error else r for r in step.results]
    elements = [{k: redact(v, secrets) for k, v in e.items()} if e else e for e in step.elements]
    actions = [replace(a, text=redact(a.text, secrets)) if a.text else a for a in step.actions]
    return replace(step, thought=redact(step.thought, secrets) if step.thought else None,
                   url=redact(step.url, secrets), results=results, elements=elements, actions=actions,
                   messages=[redact(m, secrets) for m in step.messages])


def record_step(store: TaskStore, task: Task, holder: str, step: StepRecord, observation: Observation) -> bool:
    """Store the step's screenshot (and ARIA snapshot, when one was taken), bump ``steps_taken`` and append the
    ``step`` event (with the attempt it belongs to, the native action, the elements clicked, the timings,
    ``human`` and ``request_id`` for a user's action, and the step's model usage, already on the record since its
    call returned: ``worker/metering.py``) in one round trip, if ``holder`` (this worker) still holds the lease.
    Returns False when the task is no longer running or paused (cancelled under us).

    Raises:
        LeaseLost: the worker no longer holds the task.
    """
    thought = (step.thought or "").splitlines()[0][:200] if step.thought else None
    event: dict[str, Any] = {
        "type": "step", "task_id": task.task_id, "step": step.step, "attempt": task.attempt, "ts": now(),
        "url": step.url, "actions": [a.to_dict() for a in step.actions],
        "results": [{k: v for k, v in vars(r).items() if v is not None} for r in step.results],
        "thought": step.thought, "messages": step.messages, "screenshot": {"step": step.step},
    }
    if step.usage is not None:  # this step's model usage (the task's running sums were updated by the meter)
        event["usage"] = step.usage
    if step.human:  # a user's action from the console (takeover): the API's POST .../actions waits for this event
        event.update(human=True, request_id=step.request_id)
    if step.native is not None:
        event["native"] = step.native
    if step.timings:
        event["timings"] = step.timings
    if any(e is not None for e in step.elements):  # what each click hit (role and accessible name)
        event["elements"] = step.elements
    extra = []
    if observation.accessibility:  # in the artifact store, not the event log: snapshots can be large
        packed = gzip.compress(observation.accessibility.encode(), compresslevel=1)  # ~0.2 ms for 20 KB
        extra.append((aria_name(step.step), packed, "application/gzip"))
        event["aria"] = True
    fields = {"steps_taken": step.step, "message": thought, "current_url": step.url}
    return store.record_step(task.task_id, step.step, observation.screenshot, fields, event, holder=holder,
                             extra=extra).ok


def end(rt: Runtime, task: Task, outcome: Outcome) -> str:
    """Record the task's end (status, exit code, result or error, the ``end`` event, its webhook delivery in the
    outbox) if this worker still holds it, then what follows: the webhook sent, deferred tasks of its tenant
    released. A task that already ended (cancelled meanwhile) keeps its first end.

    Raises:
        LeaseLost: the worker no longer holds the task (nothing is written).
    """
    result = rt.store.finish(task.task_id, outcome.code, result=outcome.result, error=outcome.error,
                             holder=rt.worker_id)
    if result.lost:
        raise LeaseLost("the lease expired before the end could be recorded")
    if not result.ok:
        log.info("task %s already ended as %s", task.task_id, result.status)
        return "ended"
    metrics.observe_end(task.kind, str(EXIT_STATUS[outcome.code]), now() - (task.started_at or now()))
    task_ended(rt.dispatcher, task, result.delivery_id)
    return "ended"


def _hand_back(rt: Runtime, task: Task, back: HandBack) -> str:
    """Give the task back (its worker shuts down, or it stayed paused too long), or cancel it (``back.end``)."""
    if back.end:
        return end(rt, task, Outcome(ExitCode.CANCELLED, error=back.reason))
    given = rt.store.recovery.requeue(task.task_id, "handback", back.reason, rt.worker_id)
    log.info("task %s handed back: %s (%s)", task.task_id, given.outcome, back.reason)
    if given.outcome == "lost":
        raise LeaseLost("the lease expired before the task could be handed back")
    if given.outcome == "requeued":
        rt.dispatcher.dispatch([task.task_id])
        return "handed back"
    return "released" if given.outcome == "released" else given.outcome


def _environment_failed(rt: Runtime, task: Task, error: str) -> str:
    """The browser or desktop could not start or crashed: start the task again as its next attempt while
    ``environment_retries`` allow, else end it with exit code 5."""
    if task.attempt <= rt.settings.environment_retries:
        again = rt.store.recovery.requeue(task.task_id, "retry", f"its environment failed ({error[:200]}); "
                                          "it starts again", rt.worker_id)
        if again.outcome == "requeued":
            rt.dispatcher.dispatch([task.task_id])
            return "requeued"
        if again.outcome == "released":  # it was paused: a resume starts it again
            return "released"
        if again.outcome == "lost":
            raise LeaseLost("the lease expired before the task could be requeued")
    return end(rt, task, Outcome(ExitCode.ENVIRONMENT_ERROR, error=error))
