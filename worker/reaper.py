"""The reaper: what finds tasks nobody owns any more and puts them back in the work, so no task is lost or stuck.

Every worker process that consumes (the Celery main process) runs one :class:`Reaper` thread, which also says
every ``reaper_interval`` seconds which kinds of task its worker serves (``TaskStore.queue.heartbeat``: a queued
task of a kind nobody served lately waits with "no worker for kind ..."). One of them at a time, holding the
reaper lock in Redis, does the rounds (a worker that dies lets the lock go after three rounds).
Each round (every ``reaper_interval`` seconds):

1. tasks whose lease expired (their worker was killed, lost its machine or was cut off from Redis): a running task
   goes back to ``queued`` to start again as its next attempt, at the front of its queue, or ends with exit code 6
   after ``max_attempts``; a paused one stays paused with no worker (a resume queues it);
2. run messages still due in the dispatch outbox (whoever requeued or released a task died before sending it, or
   the broker was down) are sent;
3. webhook deliveries that are due (a failed attempt's backoff ran out, or their sender died) are handed out;
4. tasks deferred by their tenant's running limit that now fit are released.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from shared.queue import Dispatcher, release_deferred, send_delivery, task_ended
from shared.states import ExitCode
from shared.store import now_ms

log = logging.getLogger(__name__)

DISPATCH_GRACE_MS = 5_000
"""A run message is sent by the reaper only once it has been due this long (whoever put it in the outbox usually
sends it at once)."""


@dataclass
class Round:
    """What one round did (counts), for logs and tests."""

    requeued: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    dispatched: int = 0
    deliveries: int = 0
    deferred: int = 0

    def __bool__(self) -> bool:
        return bool(self.requeued or self.released or self.exhausted or self.dispatched or self.deliveries
                    or self.deferred)


class Reaper(threading.Thread):
    """Runs reaper rounds every ``reaper_interval`` seconds while this process holds the reaper lock.

    Args:
        dispatcher: sends run messages and webhook deliveries (its store is the one the rounds read).
        owner: this process's worker id ("host:pid"), the lock's value.
        kinds: the kinds of task this worker serves (its queues), for the heartbeat.
    """

    def __init__(self, dispatcher: Dispatcher, owner: str, kinds: Sequence[str] = ()):
        super().__init__(name="lodestar-reaper", daemon=True)
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self.settings = dispatcher.settings
        self.owner = owner
        self.kinds = tuple(kinds)
        self._stop_event = threading.Event()

    def heartbeat(self) -> None:
        """Say this worker serves :attr:`kinds` (never raises: a missed beat only shows in wait reasons)."""
        try:
            if self.kinds:
                self.store.queue.heartbeat(self.kinds, self.owner)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        interval = self.settings.reaper_interval
        self.heartbeat()
        while not self._stop_event.wait(interval):
            self.heartbeat()
            try:
                if self.store.recovery.take_lock(self.owner, int(interval * 3000)):
                    done = self.round()
                    if done:
                        log.info("reaper: %s", done)
            except RedisError as exc:  # Redis restarting: the next round catches up
                log.warning("reaper round failed: %s", exc)
            except Exception:
                log.exception("reaper round failed")

    def stop(self) -> None:
        """Stop after the current round and let the lock go."""
        self._stop_event.set()
        try:
            self.store.recovery.drop_lock(self.owner)
        except RedisError:
            pass

    def round(self) -> Round:
        """One round (see the module's docstring). Raises RedisError when Redis is unreachable."""
        done = Round()
        recovery = self.store.recovery
        for task_id in recovery.expired_leases(now_ms()):
            outcome = recovery.requeue(task_id, "lost", "its worker was lost; it starts again")
            if outcome.outcome == "requeued":
                done.requeued.append(task_id)
            elif outcome.outcome == "released":
                done.released.append(task_id)
            elif outcome.outcome == "exhausted":
                self._fail(task_id, outcome.attempt)
                done.exhausted.append(task_id)
        if done.requeued:
            self.dispatcher.dispatch(done.requeued)
        due = recovery.due_dispatch(now_ms() - DISPATCH_GRACE_MS)
        done.dispatched = self.dispatcher.dispatch(due)
        deliveries = self.store.deliveries
        resend_ms = now_ms() + int(self.settings.webhook_timeout * 2000) + 30_000  # if its sender never takes it
        handed = deliveries.hand(deliveries.due(now_ms()), resend_ms)
        for delivery_id, token in handed.items():
            send_delivery(self.dispatcher.app, delivery_id, token)
        done.deliveries = len(handed)
        for tenant in recovery.deferring_tenants():
            done.deferred += release_deferred(self.dispatcher, tenant)
        return done

    def _fail(self, task_id: str, attempt: int) -> None:
        result = self.store.finish(task_id, ExitCode.WORKER_LOST, error=(
            f"its worker was lost on attempt {attempt} of {self.settings.max_attempts} (LODESTAR_MAX_ATTEMPTS)"))
        task = self.store.get(task_id)
        if result.ok and task is not None:
            task_ended(self.dispatcher, task, result.delivery_id)
