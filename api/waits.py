"""Long-poll waits without polling: one Redis pub/sub subscriber per API process wakes every waiting request.

``TaskStore.finish`` publishes the id of each task that ends on ``P:ended``; :class:`EndWatcher` listens there
and sets the ``threading.Event`` of every request waiting on that id. A thousand waiting clients cost one Redis
connection and one thread per API process, plus each client's own request thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


class EndWatcher:
    """Wakes waiters when a task ends. Thread-safe; the listener thread starts on the first :meth:`wait`."""

    def __init__(self, client: redis.Redis, channel: str):
        self._client = client
        self._channel = channel
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def _ensure_listening(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="end-watcher", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        while not self._stopped.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._channel)
                self._wake_all()  # anything that ended while we were (re)connecting
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._wake(message["data"].decode())
            except redis.RedisError as exc:
                log.warning("end watcher lost Redis (%s); reconnecting", exc)
                time.sleep(1)
            finally:
                pubsub.close()

    def _wake(self, task_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(task_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def wait(self, task_id: str, ended: Callable[[], bool], timeout: float) -> bool:
        """Block until ``ended()`` is true or ``timeout`` seconds pass; returns ``ended()``.

        ``ended`` is checked after registering (no lost wake-up), on every wake-up, and every 30 s as a safety net.
        """
        self._ensure_listening()
        event = threading.Event()
        with self._lock:
            self._waiters[task_id].add(event)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if ended():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event.wait(min(remaining, 30.0))
                event.clear()
        finally:
            with self._lock:
                self._waiters[task_id].discard(event)
                if not self._waiters[task_id]:
                    del self._waiters[task_id]

    def stop(self) -> None:
        self._stopped.set()
