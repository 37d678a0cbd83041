"""Human takeover of a paused task: the actions a user performs in the task's own browser or desktop.

The API puts each action on the task's actions list (``P:task:{id}:actions``) and notifies its worker on the control
channel (``takeover.lua``: only while the task is paused and a worker holds it). The paused worker takes the list
(:meth:`Takeover.take`), performs each action through the same allowlist as the agent's, and records it as a step
marked ``human`` with the action's ``request_id``: the step event is the answer the API waits for
(``api/routes/takeover.py``, through the process's event hub).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts


@dataclass(frozen=True)
class Handed:
    """Outcome of :meth:`Takeover.submit`: ``outcome`` is "queued" (the worker was notified), "not_paused",
    "released" (paused, but no worker holds it: resume it first) or "missing"; ``status`` the task's status;
    ``entry`` the queued entry (for :meth:`Takeover.withdraw`)."""

    outcome: str
    status: str
    entry: str = ""


_OUTCOMES = {1: "queued", 0: "not_paused", -1: "missing", -3: "released"}


class Takeover:
    """The actions lists of paused tasks. Reached as ``TaskStore.takeover``.

    Args:
        client: the store's Redis client.
        keys: the store's key names.
        settings: ``takeover_timeout`` (how long an action waits for its worker).
        scripts: the store's registered scripts.
    """

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, scripts: Scripts):
        self._redis, self._keys, self._settings, self._scripts = client, keys, settings, scripts

    def submit(self, task_id: str, request_id: str, action: dict[str, Any]) -> Handed:
        """Queue ``action`` (the ``Action`` schema's JSON form) for the worker of the paused task ``task_id``,
        identified by ``request_id``, and notify the worker."""
        keys = self._keys
        entry = json.dumps({"id": request_id, "action": action}, separators=(",", ":"))
        found, status = self._scripts.takeover(
            keys=[keys.task(task_id), keys.lease(task_id), keys.actions(task_id)],
            args=[entry, keys.control(task_id), json.dumps({"command": "action", "task_id": task_id}),
                  max(60, int(self._settings.takeover_timeout * 4))])
        return Handed(_OUTCOMES[int(found)], status.decode() if status else "", entry)

    def take(self, task_id: str) -> list[dict[str, Any]]:
        """Every action waiting for the task's worker, oldest first, as ``{"id", "action"}``; the list is emptied
        (one MULTI/EXEC: an action is taken once)."""
        key = self._keys.actions(task_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw = cast(list[bytes], pipe.execute()[0])
        return [json.loads(item) for item in raw]

    def withdraw(self, task_id: str, entry: str) -> bool:
        """Take back an action its worker has not taken yet (the API gave up waiting); True if it was still there."""
        return bool(self._redis.lrem(self._keys.actions(task_id), 1, entry))
