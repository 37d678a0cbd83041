"""The control channel between API and worker: pause, resume, cancel, injected messages and human actions.

State first, notice second: ``send_<command>`` writes the desired state to the task record in Redis and then
publishes a notice on the task's pub/sub channel (one Lua call, see ``TaskStore.apply``). The worker's
:class:`ControlChannel` subscribes before it reads the state, so nothing sent before it started is lost (pub/sub
alone is fire-and-forget), and re-reads only the part a notice names (``handle_<command>``).

Human takeover: while a task is paused, the API queues actions for its worker (``TaskStore.takeover``, an ``action``
notice); :meth:`ControlChannel.wait_while_paused` returns when one arrives, and the loop performs it
(``worker/loop.py``) and waits again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from shared.states import TERMINAL, ExitCode, Status
from shared.store import ApplyResult, TaskStore

log = logging.getLogger(__name__)


# --- API side: send_<command> ----------------------------------------------------------------------------------------
def send_pause(store: TaskStore, task_id: str) -> ApplyResult:
    """running -> paused; the worker stops before its next action and holds its environment open."""
    return store.transition(task_id, Status.PAUSED, notice="pause", source="api")


def send_resume(store: TaskStore, task_id: str) -> ApplyResult:
    """paused -> running: the worker that holds the task continues where it stopped. A paused task no worker holds
    (its worker shut down or let it go after ``pause_timeout``) goes back to ``queued`` instead (``requeued``): the
    caller sends its run message (``shared.queue.Dispatcher.dispatch``), and it starts again in a fresh
    environment."""
    found, status, seq, outcome = store.recovery.resume(task_id)
    return ApplyResult(found != -1, found == 1, status or None, seq, requeued=outcome == "requeued")


def send_message(store: TaskStore, task_id: str, content: str, idempotency_key: str | None = None) -> ApplyResult:
    """Queue ``content`` for the agent; delivered at its next step (kept if the task has not started yet). A
    repeated ``idempotency_key`` for the task queues nothing and answers ``replayed`` (``TaskStore.inject``)."""
    return store.inject(task_id, content, idempotency_key)


def send_cancel(store: TaskStore, task_id: str) -> ApplyResult:
    """End a queued, running or paused task as ``cancelled`` (exit code 4) at once. A queued task never starts;
    a running one's worker sees the notice, stops before its next action and tears its environment down."""
    return store.finish(task_id, ExitCode.CANCELLED, error="cancelled by the user", notice="cancel")


# --- worker side: handle_<command> ------------------------------------------------------------------------------------
@dataclass
class ControlState:
    """What the worker knows of the user's wishes. ``pending`` messages have not reached the policy yet;
    ``actions``: human actions ``{"id", "action"}`` waiting to be performed (only while paused)."""

    status: str = Status.RUNNING
    delivered: int = 0
    pending: list[str] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)

    @property
    def paused(self) -> bool:
        return self.status == Status.PAUSED

    @property
    def stop(self) -> bool:
        """The task ended under the worker (cancelled, or ended by another party): stop before the next action."""
        return self.status in TERMINAL


class LocalControl:
    """An in-memory control channel for episodes run without Redis (development harnesses, tests): nobody pauses
    or cancels; :meth:`send_message` queues a message for the policy's next step, as ``inject_message`` does."""

    def __init__(self) -> None:
        self.state = ControlState()

    def send_message(self, content: str) -> None:
        self.state.pending.append(content)

    def poll(self) -> ControlState:
        return self.state

    def refresh(self) -> ControlState:
        return self.state

    def wait_while_paused(self, deadline: float, on_tick: Callable[[], None] | None = None) -> ControlState:
        return self.state

    def ask(self, question: str, deadline: float) -> ControlState:
        """Nobody can answer: the question is dropped and the episode goes on."""
        log.info("no user to ask (local control): %s", question)
        return self.state

    def take_messages(self) -> list[str]:
        messages, self.state.pending = self.state.pending, []
        self.state.delivered += len(messages)
        return messages

    def take_actions(self) -> list[dict]:
        """Nobody takes over a local episode: always empty."""
        return []


class HandBack(Exception):
    """Raised at a checkpoint when the worker must let its task go without ending it (its process is shutting
    down, or the task stayed paused past ``pause_timeout``): the worker closes the environment and gives the task
    back (``Recovery.requeue``). With ``end`` the task is to be cancelled instead (``pause_timeout_action=end``)."""

    def __init__(self, reason: str, end: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.end = end


Guard = Callable[[ControlState], None]
"""Called with the current state at every checkpoint and while paused (about once a second): raises
``shared.store.LeaseLost`` or :class:`HandBack` to stop the episode at once (see ``worker/runner.py``)."""


class ControlChannel:
    """The worker's end of a task's control channel. Not thread-safe; one per running task.

    Subscribes first, then reads the whole state, so a command sent at any time before or after the task started
    is seen. :meth:`poll` costs one non-blocking socket read when no notice is waiting. A dropped connection (Redis
    restarting) is not an error here: the notices it lost are found by the next :meth:`sync` (state first). The
    ``guard`` is called at every poll and wait tick. ``on_notice(command, seconds)`` is called for each notice
    applied, with the seconds since the API sent it (its ``ts``; the two hosts' clocks must agree): the control
    latency.
    """

    def __init__(self, store: TaskStore, task_id: str, guard: Guard | None = None,
                 on_notice: Callable[[str, float], None] | None = None):
        self.store = store
        self.task_id = task_id
        self._on_notice = on_notice
        self.state = ControlState()
        self._guard = guard
        self._pubsub = store.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(store.keys.control(task_id))
        self._resync = False
        self._handlers: dict[str, Callable[[], None]] = {
            "pause": self.handle_status, "resume": self.handle_status,
            "cancel": self.handle_status, "message": self.handle_message, "action": self.handle_actions,
        }
        self.sync()

    def sync(self) -> ControlState:
        """Read status and undelivered messages from Redis (after subscribing: nothing is missed)."""
        self.state.status, self.state.delivered = self.store.control_snapshot(self.task_id)
        self.handle_message()
        if self.state.paused:
            self.handle_actions()
        return self.state

    def handle_status(self) -> None:
        self.state.status = str(self.store.status(self.task_id) or "")

    def handle_message(self) -> None:
        start = self.state.delivered + len(self.state.pending)
        self.state.pending.extend(m["content"] for m in self.store.inbox(self.task_id, start))

    def handle_actions(self) -> None:
        self.state.actions.extend(self.store.takeover.take(self.task_id))

    def _dispatch(self, message: dict | None) -> bool:
        if message is None or message.get("type") != "message":
            return False
        try:
            notice = json.loads(message["data"])
            handler = self._handlers[notice["command"]]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed control notice on %s: %r", self.task_id, message.get("data"))
            return True
        handler()
        if self._on_notice is not None and isinstance(notice.get("ts"), int | float):
            self._on_notice(notice["command"], max(0.0, time.time() - notice["ts"]))
        return True

    def _next_notice(self, timeout: float) -> dict | None:
        """The next pub/sub message within ``timeout`` s, or None; after a connection error (Redis restarting) the
        state is read again once Redis answers (notices sent meanwhile were lost)."""
        try:
            message = self._pubsub.get_message(timeout=timeout)
            if self._resync:
                self._resync = False
                self.sync()
            return message
        except RedisError as exc:
            log.warning("control channel of %s: %s; the state is read again once Redis is back", self.task_id, exc)
            self._resync = True
            time.sleep(min(timeout, 0.5))
            return None

    def poll(self) -> ControlState:
        """Apply every notice waiting on the channel, without blocking; then the guard."""
        while self._dispatch(self._next_notice(0)):
            pass
        if self._guard is not None:
            self._guard(self.state)
        return self.state

    def refresh(self) -> ControlState:
        """Like :meth:`poll`, then re-read the status from Redis (authoritative even if a notice is still in flight)."""
        self.poll()
        self.handle_status()
        return self.state

    def wait_while_paused(self, deadline: float, on_tick: Callable[[], None] | None = None) -> ControlState:
        """Block while the task is paused, until ``deadline`` (``time.monotonic()`` seconds) or a human action
        arrives (``state.actions``: the caller performs them, then waits again).

        ``on_tick`` runs about once a second (e.g. a heartbeat). Returns the state that ended the wait.
        """
        while (self.state.paused and not self.state.stop and not self.state.actions
               and time.monotonic() < deadline):
            timeout = max(0.0, min(1.0, deadline - time.monotonic()))
            if not self._dispatch(self._next_notice(timeout)):
                with contextlib.suppress(RedisError):
                    self.sync()  # belt and braces: a notice lost with a dropped connection is caught within a second
            if on_tick:
                on_tick()
            if self._guard is not None:
                self._guard(self.state)
        return self.state

    def ask(self, question: str, deadline: float) -> ControlState:
        """Pause the task with a question for the user (a ``status`` event carrying ``question``, and the task's
        ``message``) and hold until the user resumes it, answers with a message (the task is then resumed here;
        the message reaches the policy at its next step), cancels it, or ``deadline`` (``time.monotonic()``)
        passes. The caller's next checkpoint turns a cancel or a still-paused task into the episode's outcome."""
        store, task_id = self.store, self.task_id
        asked = store.transition(task_id, Status.PAUSED, fields={"message": f"question for the user: {question}"[:500]},
                                 reason="ask_user", question=question)
        if not asked.ok and asked.status == Status.PAUSED:  # already paused by the user: still show the question
            store.append_event(task_id, {"type": "status", "status": str(Status.PAUSED), "reason": "ask_user",
                                         "question": question})
        self.refresh()
        # a human action ends the wait too: the caller's checkpoint performs it and holds while the task is paused
        while (self.state.paused and not self.state.pending and not self.state.actions
               and time.monotonic() < deadline):
            self.wait_while_paused(min(deadline, time.monotonic() + 1.0))
        if self.state.paused and self.state.pending:
            store.transition(task_id, Status.RUNNING, reason="answered")
            self.refresh()
        return self.state

    def take_messages(self) -> list[str]:
        """Hand the pending messages to the policy and record them as delivered (survives a worker restart)."""
        messages, self.state.pending = self.state.pending, []
        if messages:
            self.state.delivered += len(messages)
            self.store.set_delivered(self.task_id, self.state.delivered)
        return messages

    def take_actions(self) -> list[dict]:
        """Hand the waiting human actions to the caller (each is taken once)."""
        actions, self.state.actions = self.state.actions, []
        return actions

    def close(self) -> None:
        try:
            self._pubsub.unsubscribe()
            self._pubsub.close()
        except Exception as exc:  # the connection may already be gone
            log.debug("pubsub close failed: %s", exc)
