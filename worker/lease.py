"""The worker's hold on a task: a lease in Redis (``TaskStore.claim``) kept alive by a heartbeat thread.

A task is run by at most one worker at a time: the claim sets the lease (``lease_ttl`` seconds), :class:`LeaseKeeper`
renews it every ``lease_ttl / 3`` seconds, and the end of the task releases it. A worker that dies stops renewing,
so its lease expires and another worker may take the task over.
"""

from __future__ import annotations

import logging
import threading

from shared.store import TaskStore

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews ``worker_id``'s lease on ``task_id`` every ``lease_ttl / 3`` seconds (at least every 0.5 s) until
    :meth:`stop`. ``lost`` is set once a renewal finds the lease held by nobody or by another worker."""

    def __init__(self, store: TaskStore, task_id: str, worker_id: str):
        super().__init__(name=f"lease-{task_id}", daemon=True)
        self.store, self.task_id, self.worker_id = store, task_id, worker_id
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(self.store.settings.lease_ttl / 3, 0.5)
        while not self._stop_event.wait(interval):
            try:
                if not self.store.renew_lease(self.task_id, self.worker_id):
                    log.warning("lost the lease on %s", self.task_id)
                    self.lost.set()
            except Exception as exc:  # Redis briefly unreachable: try again next tick
                log.warning("lease renewal for %s failed: %s", self.task_id, exc)

    def stop(self) -> None:
        self._stop_event.set()
