"""Priority is real on the Redis broker: a high task submitted after many low ones starts before them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LiveStack, Site, start_stack

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]


@pytest.fixture(scope="module")
def one_slot(redis_base: str, site: Site) -> Iterator[LiveStack]:
    """A stack with ONE browser slot on its own database, so every task waits its turn."""
    stack, info = start_stack(f"{redis_base}/13", site, concurrency=1)
    yield info
    stack.stop()


def test_high_priority_submitted_last_starts_before_earlier_low_ones(one_slot: LiveStack) -> None:
    live = one_slot
    http = live.http()

    def submit(priority: str, script: str) -> str:
        resp = http.post(f"{live.base_url}/agent/tasks",
                         json={"agent_type": "scripted", "instruction": script, "priority": priority})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["task_id"])

    # Given a busy worker (its only slot runs a 2-second task) ...
    blocker = submit("normal", "wait 2\ndone")
    live.wait_until(blocker, lambda t: t["status"] == "running")
    # ... and six low-priority tasks queued behind it, then one normal and one high
    lows = [submit("low", "done") for _ in range(6)]
    normal = submit("normal", "done")
    high = submit("high", "done")
    # When the worker frees up and drains the queue
    tasks = {tid: live.wait_ended(tid, timeout=120) for tid in [blocker, *lows, normal, high]}
    # Then the high task started first, the normal one next, and the low ones in submission order (FIFO per level)
    order = sorted(tasks, key=lambda tid: tasks[tid]["started_at"])
    assert order[0] == blocker
    assert order[1] == high, [tasks[t]["priority"] for t in order]
    assert order[2] == normal
    assert order[3:] == lows
    assert all(t["status"] == "completed" for t in tasks.values())
