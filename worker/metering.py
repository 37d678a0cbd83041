"""The meter a worker gives each model-backed task (``worker.policy.Meter``): budgets checked before every model call,
provider rate limits shared by every worker, and each call's usage and cost recorded the moment it returns.

Before a call (:meth:`TaskMeter.before_call`): the call's estimated cost (``ModelPolicy.estimate``) must fit in the
task's ``max_cost_usd``, its batch's ``max_cost_usd`` and its tenant's daily budget, or the task fails with exit
code 8 and an ``error`` naming the budget (``shared.store.budgets``); then one request and the estimated tokens are
taken from the model's rate-limit windows, waiting while they do not fit or a provider's ``retry-after`` holds
(the task's ``message`` says so: "waiting for the openai rate limit (rpm 60)"). A cancel, a lost lease or a
shutdown is noticed while it waits. After it (:meth:`TaskMeter.after_call`): the usage and cost go on the task's
record at once (a task paused right after a call shows what it spent), and on its batch's and day's sums.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.control import ControlState
from shared.models import ProviderLimit
from shared.states import ExitCode, Status
from shared.store import LeaseLost, TaskStore
from shared.task import Task
from worker.policy import CallEstimate, PolicyError

log = logging.getLogger(__name__)

WAIT_TICK = 1.0
"""Longest sleep (seconds) between two looks at the control channel while a task waits for a rate limit."""


class TaskMeter:
    """The ``Meter`` of one running task.

    Args:
        store: the task store.
        task: the task (its budgets, batch and tenant).
        holder: this worker's id; every write checks it still holds the task's lease.
        poll: the task's control channel's ``poll`` (its guard raises to hand the task back or give it up).
        deadline: ``time.monotonic()`` time at which the task times out.
        clock: the clock of ``deadline``.
    """

    def __init__(self, store: TaskStore, task: Task, holder: str, poll: Callable[[], ControlState],
                 deadline: float, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.task = task
        self.holder = holder
        self.poll = poll
        self.deadline = deadline
        self.clock = clock

    def before_call(self, limit: ProviderLimit, estimate: CallEstimate) -> None:
        """Check the budgets, then wait for room in ``limit``'s windows.

        Raises:
            PolicyError: code 8 (a budget would be exceeded), 4 (cancelled while waiting), 3 (out of time while
                waiting).
            LeaseLost, HandBack: from the control channel's guard, while waiting.
        """
        self.check_budgets(estimate.cost_usd or 0.0)
        announced = False
        while True:
            wait, which = self.store.limits.acquire(limit, estimate.tokens)
            if wait <= 0:
                return
            if not announced:
                announced = True
                message = f"waiting for the {limit.provider} rate limit ({limit.describe(which)})"
                log.info("task %s: %s, %.1f s", self.task.task_id, message, wait)
                result = self.store.apply(self.task.task_id, fields={"message": message}, holder=self.holder,
                                          allowed_from=(Status.RUNNING, Status.PAUSED))
                if result.lost:
                    raise LeaseLost("the lease expired while the task waited for a rate limit")
            if self.poll().stop:
                raise PolicyError("cancelled while waiting for a rate limit", code=ExitCode.CANCELLED)
            if self.clock() + min(wait, WAIT_TICK) >= self.deadline:
                raise PolicyError(f"max_duration_seconds reached while waiting for the {limit.provider} rate limit",
                                  code=ExitCode.TIMED_OUT)
            time.sleep(min(wait, WAIT_TICK))

    def check_budgets(self, next_call: float) -> None:
        """Raise PolicyError (code 8, naming the budget) when a call costing ``next_call`` USD would go over the
        task's, its batch's or its tenant's daily budget."""
        # one round trip per model call, always: a tenant's daily budget may be set at any time
        reason = self.store.budgets.state(self.task).exceeded_by(next_call, self.task.batch_id)
        if reason is not None:
            raise PolicyError(reason, code=ExitCode.BUDGET_EXCEEDED)

    def after_call(self, limit: ProviderLimit, usage: dict[str, Any], estimate: CallEstimate) -> None:
        """Record the call's usage and cost on the task (and its batch's and day's sums); count tokens beyond the
        estimate against ``tpm``.

        Raises:
            LeaseLost: the worker no longer holds the task (nothing was recorded).
        """
        found, _ = self.store.budgets.spend(self.task.task_id, usage, holder=self.holder)
        if found == -2:
            raise LeaseLost("the lease expired before the model call could be recorded")
        used = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
        try:
            self.store.limits.settle(limit, used - estimate.tokens)
        except Exception as exc:  # best effort: the call is made and recorded
            log.warning("could not count %s's extra tokens: %s", limit.scope, exc)

    def blocked(self, limit: ProviderLimit, seconds: float) -> None:
        """A provider asked to wait ``seconds`` (429 ``retry-after``): every worker calling ``limit``'s scope
        waits that long."""
        log.info("%s asked to wait %.1f s (retry-after): every worker holds back", limit.scope, seconds)
        self.store.limits.block(limit.scope, seconds)
