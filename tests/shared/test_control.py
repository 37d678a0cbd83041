"""ControlChannel (the worker's end) and the send_<command> calls (the API's end) on a real Redis."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared import control
from shared.control import ControlChannel, ControlState
from shared.states import ExitCode, Status
from shared.store import TaskStore, now_ms
from tests.conftest import make_task, snapshot

pytestmark = pytest.mark.redis


@pytest.fixture
def channels(store: TaskStore) -> Iterator[list[ControlChannel]]:
    """Channels a test opened, closed at the end."""
    opened: list[ControlChannel] = []
    yield opened
    for ch in opened:
        ch.close()


def open_channel(store: TaskStore, task_id: str, channels: list[ControlChannel]) -> ControlChannel:
    ch = ControlChannel(store, task_id)
    channels.append(ch)
    return ch


def poll_until(ch: ControlChannel, predicate: Callable[[ControlState], bool], tries: int = 300) -> ControlState:
    """Poll until ``predicate(state)``: a notice published a moment ago may still be on its way (pub/sub is
    asynchronous and poll never blocks). Bounded by a number of tries, not a timing assertion."""
    state = ch.poll()
    for _ in range(tries):
        if predicate(state):
            return state
        time.sleep(0.01)
        state = ch.poll()
    raise AssertionError(f"the channel never reached the expected state; last: {state}")


def test_message_sent_before_the_channel_exists_is_delivered_exactly_once(store: TaskStore,
                                                                         channels: list[ControlChannel]) -> None:
    # Given a message injected while the task is still queued (no worker, no subscriber)
    task_id = make_task(store)
    assert control.send_message(store, task_id, "first").ok
    # When the worker opens its channel
    ch = open_channel(store, task_id, channels)
    # Then the message is delivered once, and polling finds nothing more
    assert ch.poll().pending == ["first"]
    assert ch.take_messages() == ["first"]
    assert ch.poll().pending == []
    assert ch.take_messages() == []
    assert store.get(task_id).messages_delivered == 1
    # And a restarted worker's new channel does not deliver it again
    ch.close()
    again = open_channel(store, task_id, channels)
    assert again.state.delivered == 1
    assert again.poll().pending == []
    assert again.take_messages() == []
    # But a message sent afterwards reaches the new channel, once
    assert control.send_message(store, task_id, "second").ok
    assert poll_until(again, lambda st: bool(st.pending)).pending == ["second"]
    again.sync()  # a resync (as wait_while_paused does) must not duplicate a pending message
    assert again.take_messages() == ["second"]
    assert again.poll().pending == [] and again.take_messages() == []
    assert store.get(task_id).messages_delivered == 2


def test_messages_keep_their_order(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    ch = open_channel(store, task_id, channels)
    for text in ("a", "b", "c"):
        assert control.send_message(store, task_id, text).ok
    assert poll_until(ch, lambda st: len(st.pending) >= 3).pending == ["a", "b", "c"]
    assert ch.take_messages() == ["a", "b", "c"]


def test_pause_is_seen_by_poll_and_resume_from_another_thread_ends_the_wait(store: TaskStore,
                                                                          channels: list[ControlChannel]) -> None:
    # Given a running task whose worker subscribed
    task_id = make_task(store, Status.RUNNING, holder="w1")
    ch = open_channel(store, task_id, channels)
    assert ch.poll().status == "running"
    # When the user pauses it
    assert control.send_pause(store, task_id).ok
    # Then polling sees it
    state = poll_until(ch, lambda st: st.status != "running")
    assert state.paused and not state.stop and state.status == "paused"
    # When a resume arrives from another thread while the worker waits
    ticks: list[float] = []
    resumer = threading.Timer(0.3, lambda: control.send_resume(store, task_id))
    resumer.start()
    try:
        state = ch.wait_while_paused(time.monotonic() + 30, on_tick=lambda: ticks.append(time.monotonic()))
    finally:
        resumer.join()
    # Then the wait returned because of the resume (not the deadline)
    assert state.status == "running" and not state.paused and not state.stop
    assert store.get(task_id).status == "running"
    assert ticks  # on_tick ran while waiting


def test_pause_sent_before_the_channel_exists_is_seen_at_once(store: TaskStore,
                                                             channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    assert control.send_pause(store, task_id).ok
    ch = open_channel(store, task_id, channels)
    assert ch.state.paused
    # the wait ends at the deadline when nobody resumes
    state = ch.wait_while_paused(time.monotonic() + 0.2)
    assert state.paused and not state.stop


def test_wait_while_paused_ends_on_cancel(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    ch = open_channel(store, task_id, channels)
    assert control.send_pause(store, task_id).ok
    assert poll_until(ch, lambda st: st.paused).paused
    canceller = threading.Timer(0.2, lambda: control.send_cancel(store, task_id))
    canceller.start()
    try:
        state = ch.wait_while_paused(time.monotonic() + 30)
    finally:
        canceller.join()
    assert state.stop and state.status == "cancelled"


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b"5", b'"pause"', b"{}", b'{"command": "explode"}',
                                  b'{"command": ["pause"]}', b"\xff\xfe", b'{"task_id": "x"}'])
def test_a_malformed_notice_is_ignored(store: TaskStore, channels: list[ControlChannel], data: bytes,
                                       caplog: pytest.LogCaptureFixture) -> None:
    # Given a subscribed worker
    task_id = make_task(store, Status.RUNNING, holder="w1")
    ch = open_channel(store, task_id, channels)
    # When garbage is published on its channel, followed by a real notice
    assert store.redis.publish(store.keys.control(task_id), data) == 1
    assert control.send_pause(store, task_id).ok
    # Then polling neither raises nor changes anything for the garbage (logged), and still applies the pause
    with caplog.at_level(logging.WARNING, logger="shared.control"):
        state = poll_until(ch, lambda st: st.status != "running")
    assert (state.status, state.pending, state.delivered) == ("paused", [], 0)
    assert [r.getMessage() for r in caplog.records if "malformed control notice" in r.getMessage()], caplog.text


def test_send_cancel_makes_the_worker_stop(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    ch = open_channel(store, task_id, channels)
    assert not ch.poll().stop
    result = control.send_cancel(store, task_id)
    assert result.ok
    state = poll_until(ch, lambda st: st.status != "running")
    assert state.stop and state.status == "cancelled"
    record = store.get(task_id)
    assert record is not None and (record.status, record.exit_code) == ("cancelled", int(ExitCode.CANCELLED))
    end = store.read_events(task_id)[-1][1]
    assert end["type"] == "end" and end["exit_code"] == 4


def test_cancel_before_the_channel_exists_stops_at_once(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store)
    assert control.send_cancel(store, task_id).ok
    assert open_channel(store, task_id, channels).state.stop


def test_control_notices_carry_the_command_task_and_when_it_was_sent(store: TaskStore) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    before = time.time()
    sub = store.redis.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(store.keys.control(task_id))
    try:
        control.send_pause(store, task_id)
        control.send_resume(store, task_id)
        control.send_message(store, task_id, "hi")
        control.send_cancel(store, task_id)
        seen = []
        for _ in range(50):
            msg = sub.get_message(timeout=0.2)
            if msg:
                seen.append(json.loads(msg["data"]))
            if len(seen) == 4:
                break
    finally:
        sub.close()
    assert [{k: v for k, v in n.items() if k != "ts"} for n in seen] == [
        {"command": c, "task_id": task_id} for c in ("pause", "resume", "message", "cancel")]
    assert all(before <= n["ts"] <= time.time() for n in seen)  # the worker's control latency starts there


def test_the_channel_reports_each_notice_it_applies_with_its_latency(store: TaskStore) -> None:
    task_id = make_task(store, Status.RUNNING, holder="w1")
    applied: list[tuple[str, float]] = []
    channel = control.ControlChannel(store, task_id, on_notice=lambda command, s: applied.append((command, s)))
    try:
        control.send_pause(store, task_id)
        deadline = time.monotonic() + 30
        while not applied and time.monotonic() < deadline:
            channel.poll()
            time.sleep(0.01)
        assert channel.state.paused
        assert [c for c, _ in applied] == ["pause"] and 0 <= applied[0][1] < 30
    finally:
        channel.close()


def test_a_refused_pause_changes_and_publishes_nothing(store: TaskStore) -> None:
    task_id = make_task(store)  # queued: not running yet, so it cannot be paused
    sub = store.redis.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(store.keys.control(task_id))
    try:
        before = snapshot(store, task_id)
        result = control.send_pause(store, task_id)
        assert (result.ok, result.status) == (False, "queued")
        assert snapshot(store, task_id) == before
        assert store.redis.publish(store.keys.control(task_id), b"marker") == 1
        received: list[dict[str, Any]] = []
        for _ in range(50):  # everything published before the marker arrives before it
            message = sub.get_message(timeout=0.2)
            if message:
                received.append(message)
                if message["data"] == b"marker":
                    break
    finally:
        sub.close()
    assert [m["data"] for m in received] == [b"marker"]  # the refused pause published no notice


def test_resume_of_a_paused_task_is_allowed(store: TaskStore) -> None:
    task_id = make_task(store, Status.PAUSED, holder="w1")
    result = control.send_resume(store, task_id)
    assert result.ok and not result.requeued
    assert store.get(task_id).status == "running"
    assert store.recovery.due_dispatch(now_ms() + 1000) == []  # its worker goes on: no run message


def test_resume_of_a_paused_task_no_worker_holds_queues_it_again(store: TaskStore) -> None:
    # Given a paused task whose worker let it go (shut down, or pause_timeout): no lease, no worker
    task_id = make_task(store, Status.PAUSED, attempt=1)
    # When the user resumes it
    result = control.send_resume(store, task_id)
    # Then it is queued again, its run message is due in the dispatch outbox, and the event says why
    assert result.ok and result.requeued and result.status == "paused"
    task = store.get(task_id)
    assert task.status == "queued" and task.attempt == 1
    assert store.recovery.due_dispatch(now_ms() + 1000) == [task_id]
    assert store.count("t_test", "queued") == 1 and store.count("t_test", "paused") == 0
    last = store.read_events(task_id)[-1][1]
    assert (last["status"], last["reason"]) == ("queued", "resumed: starts again on the next free worker")


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING])
def test_resume_of_a_task_that_is_not_paused_is_refused(store: TaskStore, status: Status) -> None:
    task_id = make_task(store, status)
    before = snapshot(store, task_id)
    result = control.send_resume(store, task_id)
    assert (result.ok, result.status) == (False, str(status))
    assert snapshot(store, task_id) == before
