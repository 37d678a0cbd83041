"""TaskStore (records, transitions, events, leases) and ControlChannel on a real Redis."""

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
from shared.settings import Settings
from shared.states import EXIT_STATUS, TERMINAL, TRANSITIONS, ExitCode, Status
from shared.store import TaskStore, new_task_id, now

pytestmark = pytest.mark.redis


def make_task(store: TaskStore, status: Status = Status.QUEUED, **extra: Any) -> str:
    """A task record in ``status`` with its first event (seq 1)."""
    task_id = new_task_id()
    record = {"task_id": task_id, "tenant": "t_test", "status": str(status), "kind": "browser",
              "model": "tzafon.northstar-cua-fast", "max_steps": 10, "created_at": now(), "steps_taken": 0,
              "metadata": {}, **extra}
    store.create(record)
    return task_id


def snapshot(store: TaskStore, task_id: str) -> tuple[dict[bytes, bytes], int]:
    return store.redis.hgetall(store.key(task_id)), store.redis.xlen(store.key(task_id, "events"))


# --- the record ---------------------------------------------------------------------------------------------------
def test_a_record_stores_neither_its_id_nor_implied_values_and_reads_back_whole(store: TaskStore) -> None:
    task_id = make_task(store)  # steps_taken 0 and metadata {} are implied values
    raw = store.redis.hgetall(store.key(task_id))
    assert not {b"task_id", b"steps_taken", b"metadata", b"priority", b"persistent"} & set(raw)
    record = store.get(task_id)
    assert record is not None
    assert (record["task_id"], record["steps_taken"], record["metadata"], record["priority"],
            record["persistent"], record["screenshot_mode"]) == (task_id, 0, {}, "normal", False, "url")
    record["metadata"]["x"] = "1"  # the implied dict is a fresh copy per record
    assert store.get(task_id)["metadata"] == {}  # type: ignore[index]
    other = make_task(store, priority="high", metadata={"a": "1"}, persistent=True, stream_mode="concise")
    back = store.get(other)
    assert back is not None
    assert (back["priority"], back["metadata"], back["persistent"], back["stream_mode"]) == (
        "high", {"a": "1"}, True, "concise")
    # And status moves keep the indexes right, with the id taken from the key
    store.claim(task_id, "w1")
    assert store.count("t_test", "running") == 1 and store.count("t_test", "queued") == 1


def test_pages_skip_no_live_task_when_expired_ids_are_pruned_on_the_way(store: TaskStore) -> None:
    from shared.store import TaskFilter

    ids = [make_task(store) for _ in range(1500)]  # newest last
    expired = set(ids[::7]) | set(ids[-400:-300])  # their records are gone; the index still names them
    for task_id in expired:
        store.redis.delete(store.key(task_id))
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page, cursor = store.list_tasks("t_test", TaskFilter(statuses=("queued",)), 50, cursor)
        seen += [t["task_id"] for t in page]
        if cursor is None:
            break
    assert seen == [t for t in reversed(ids) if t not in expired]


# --- the transition table -----------------------------------------------------------------------------------------
REFUSED = [(f, t) for f in Status for t in Status if t not in TRANSITIONS[f]]
ALLOWED = [(f, t) for f in Status for t in TRANSITIONS[f]]


def _refused_param(frm: Status, to: Status) -> Any:
    return pytest.param(frm, to, id=f"{frm}->{to}")


def test_the_table_has_the_documented_shape() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert not any(Status.QUEUED in targets for targets in TRANSITIONS.values())
    assert {s for code, s in EXIT_STATUS.items() if code != ExitCode.COMPLETED} <= TERMINAL
    assert len(REFUSED) + len(ALLOWED) == len(Status) ** 2


@pytest.mark.parametrize(("frm", "to"), [_refused_param(f, t) for f, t in REFUSED])
def test_transition_outside_the_table_is_refused_and_changes_nothing(store: TaskStore, frm: Status,
                                                                     to: Status) -> None:
    # Given a task in status frm
    task_id = make_task(store, frm)
    before = snapshot(store, task_id)
    # When something tries to move it to a status the table does not allow
    result = store.transition(task_id, to, fields={"message": "should not be written"}, notice="pause")
    # Then it is refused, reports the current status, and the record and event log are untouched
    assert (result.found, result.ok, result.status, result.seq) == (True, False, str(frm), 0)
    assert snapshot(store, task_id) == before


@pytest.mark.parametrize(("frm", "to"), ALLOWED, ids=[f"{f}->{t}" for f, t in ALLOWED])
def test_transition_inside_the_table_is_applied_with_a_status_event(store: TaskStore, frm: Status,
                                                                    to: Status) -> None:
    task_id = make_task(store, frm)
    result = store.transition(task_id, to, fields={"message": "moved"}, source="test")
    assert (result.found, result.ok, result.status, result.seq) == (True, True, str(frm), 2)
    record = store.get(task_id)
    assert record is not None and record["status"] == str(to) and record["message"] == "moved"
    events = store.read_events(task_id)
    assert [seq for seq, _ in events] == [1, 2]
    assert events[-1][1] == {**events[-1][1], "type": "status", "status": str(to), "task_id": task_id,
                             "source": "test"}


def test_transition_of_a_missing_task_is_not_found(store: TaskStore) -> None:
    result = store.transition("task_nope", Status.RUNNING)
    assert (result.found, result.ok) == (False, False)
    assert store.redis.exists(store.key("task_nope")) == 0


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_are_final(store: TaskStore, terminal: Status) -> None:
    # Given an ended task
    task_id = make_task(store, Status.RUNNING)
    code = next(c for c, s in EXIT_STATUS.items() if s == terminal)
    assert store.finish(task_id, code, result="r").ok
    before = snapshot(store, task_id)
    # Then nothing moves it again: no transition to an active status, no second finish, no message, no claim
    for to in (Status.RUNNING, Status.PAUSED, *sorted(TERMINAL)):
        assert not store.transition(task_id, to).ok, to
    for other in ExitCode:
        assert not store.finish(task_id, other).ok, other
    assert not store.inject(task_id, "too late").ok
    assert store.claim(task_id, "w1") == ("ended", str(terminal), 0)
    assert snapshot(store, task_id) == before


# --- finish -------------------------------------------------------------------------------------------------------
def test_finish_records_the_end_and_expires_every_key(store: TaskStore, settings: Settings) -> None:
    # Given a running task with a message in its inbox, a screenshot and a worker's lease
    task_id = make_task(store, Status.RUNNING)
    assert store.inject(task_id, "hello").ok
    store.put_screenshot(task_id, 1, b"\xff\xd8jpeg")
    assert store.claim(task_id, "w1")[0] == "restarted"
    assert store.redis.exists(store.key(task_id, "lease")) == 1
    # When it finishes
    before = now()
    result = store.finish(task_id, ExitCode.COMPLETED, result="the answer")
    # Then the record holds the exit code, result and finish time
    assert result.ok and result.seq == 4
    record = store.get(task_id)
    assert record is not None
    assert (record["status"], record["exit_code"], record["result"], record["error"]) == (
        "completed", 0, "the answer", None)
    assert before <= record["finished_at"] <= now()
    # And the last event is the end event
    seq, last = store.read_events(task_id)[-1]
    assert seq == 4 and last["type"] == "end" and last["exit_code"] == 0 and last["status"] == "completed"
    assert last["result"] == "the answer" and last["task_id"] == task_id
    # And every key of the task expires after the retention period; the lease is gone
    for part in ("", "events", "inbox", "shots"):
        ttl = store.redis.ttl(store.key(task_id, part))
        assert 0 < ttl <= settings.task_retention, (part, ttl)
    assert store.redis.exists(store.key(task_id, "lease")) == 0


@pytest.mark.parametrize("code", list(ExitCode))
def test_finish_maps_each_exit_code_to_its_status(store: TaskStore, code: ExitCode) -> None:
    task_id = make_task(store, Status.RUNNING)
    assert store.finish(task_id, code, error="e").ok
    record = store.get(task_id)
    assert record is not None and (record["status"], record["exit_code"]) == (str(EXIT_STATUS[code]), int(code))


def test_finish_of_a_queued_task_only_for_codes_allowed_from_queued(store: TaskStore) -> None:
    task_id = make_task(store, Status.QUEUED)
    assert not store.finish(task_id, ExitCode.COMPLETED).ok  # queued -> completed is not in the table
    assert store.get(task_id)["status"] == "queued"  # type: ignore[index]
    assert store.finish(task_id, ExitCode.CANCELLED).ok
    assert store.get(task_id)["status"] == "cancelled"  # type: ignore[index]


# --- events -------------------------------------------------------------------------------------------------------
def test_events_are_numbered_and_read_after_a_seq(store: TaskStore) -> None:
    # Given a task (event 1) and two more events
    task_id = make_task(store)
    assert store.append_event(task_id, {"type": "step", "step": 1}) == 2
    assert store.append_event(task_id, {"type": "step", "step": 2}, fields={"steps_taken": 2}) == 3
    # Then they are numbered 1, 2, 3, and reading after n returns only the later ones
    assert [seq for seq, _ in store.read_events(task_id)] == [1, 2, 3]
    assert [(seq, e.get("step")) for seq, e in store.read_events(task_id, after=1)] == [(2, 1), (3, 2)]
    assert [seq for seq, _ in store.read_events(task_id, after=2)] == [3]
    assert store.read_events(task_id, after=3) == []
    assert store.get(task_id)["event_seq"] == 3  # type: ignore[index]
    assert store.get(task_id)["steps_taken"] == 2  # type: ignore[index]
    assert all(e["task_id"] == task_id for _, e in store.read_events(task_id))


def test_append_event_to_a_missing_task_returns_zero(store: TaskStore) -> None:
    assert store.append_event("task_gone", {"type": "step"}) == 0
    assert store.redis.exists(store.key("task_gone", "events")) == 0


# --- claims and leases --------------------------------------------------------------------------------------------
def test_claim_outcomes_through_a_task_life(store: TaskStore, settings: Settings) -> None:
    assert settings.max_attempts == 2
    task_id = make_task(store)
    lease = store.key(task_id, "lease")
    # started: queued -> running, attempt 1, lease held by w1
    assert store.claim(task_id, "w1") == ("started", "running", 1)
    record = store.get(task_id)
    assert record is not None and record["status"] == "running" and record["worker"] == "w1"
    assert record["started_at"] is not None and record["attempts"] == 1
    assert store.redis.get(lease) == b"w1"
    assert 0 < store.redis.pttl(lease) <= settings.lease_ttl * 1000
    # leased: a second worker while w1's lease lives
    assert store.claim(task_id, "w2") == ("leased", "running", 0)
    assert store.get(task_id)["attempts"] == 1  # type: ignore[index]
    # restarted: w1's lease expired (deleted here), w2 takes over on attempt 2
    store.redis.delete(lease)
    assert store.claim(task_id, "w2") == ("restarted", "running", 2)
    assert store.redis.get(lease) == b"w2" and store.get(task_id)["worker"] == "w2"  # type: ignore[index]
    # lost: past max_attempts the task is not restarted and nobody gets the lease
    store.redis.delete(lease)
    outcome, status, attempts = store.claim(task_id, "w3")
    assert (outcome, status) == ("lost", "running") and attempts == 3
    assert store.redis.exists(lease) == 0
    # every start and restart was logged as a status event with its worker and attempt
    starts = [e for _, e in store.read_events(task_id) if e.get("worker")]
    assert [(e["worker"], e["attempt"], e["status"]) for e in starts] == [("w1", 1, "running"), ("w2", 2, "running")]
    # ended: once finished, nobody claims it
    assert store.finish(task_id, ExitCode.WORKER_LOST, error="lost").ok
    assert store.claim(task_id, "w4") == ("ended", "failed", 0)


def test_claim_of_a_missing_task(store: TaskStore) -> None:
    assert store.claim("task_missing", "w1") == ("missing", "", 0)
    assert store.redis.exists(store.key("task_missing")) == 0


def test_claim_of_a_paused_task_after_a_worker_loss_keeps_it_paused(store: TaskStore) -> None:
    task_id = make_task(store)
    assert store.claim(task_id, "w1")[0] == "started"
    assert control.send_pause(store, task_id).ok
    store.redis.delete(store.key(task_id, "lease"))
    assert store.claim(task_id, "w2") == ("restarted", "paused", 2)
    assert store.get(task_id)["status"] == "paused"  # type: ignore[index]


def test_renew_lease_only_for_its_holder(store: TaskStore, settings: Settings) -> None:
    task_id = make_task(store)
    lease = store.key(task_id, "lease")
    assert store.claim(task_id, "w1")[0] == "started"
    store.redis.pexpire(lease, 500)
    # the holder renews to a full lease_ttl; another worker cannot
    assert store.renew_lease(task_id, "w1") is True
    assert store.redis.pttl(lease) > 500
    assert store.renew_lease(task_id, "w2") is False
    assert store.redis.get(lease) == b"w1"
    # release by a non-holder is a no-op; by the holder it frees the task
    store.release_lease(task_id, "w2")
    assert store.redis.get(lease) == b"w1"
    store.release_lease(task_id, "w1")
    assert store.redis.exists(lease) == 0
    assert store.renew_lease(task_id, "w1") is False
    assert store.redis.exists(lease) == 0


# --- the control channel ------------------------------------------------------------------------------------------
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
    assert store.get(task_id)["messages_delivered"] == 1  # type: ignore[index]
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
    assert store.get(task_id)["messages_delivered"] == 2  # type: ignore[index]


def test_messages_keep_their_order(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING)
    ch = open_channel(store, task_id, channels)
    for text in ("a", "b", "c"):
        assert control.send_message(store, task_id, text).ok
    assert poll_until(ch, lambda st: len(st.pending) >= 3).pending == ["a", "b", "c"]
    assert ch.take_messages() == ["a", "b", "c"]


def test_pause_is_seen_by_poll_and_resume_from_another_thread_ends_the_wait(store: TaskStore,
                                                                          channels: list[ControlChannel]) -> None:
    # Given a running task whose worker subscribed
    task_id = make_task(store, Status.RUNNING)
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
    assert store.get(task_id)["status"] == "running"  # type: ignore[index]
    assert ticks  # on_tick ran while waiting


def test_pause_sent_before_the_channel_exists_is_seen_at_once(store: TaskStore,
                                                             channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING)
    assert control.send_pause(store, task_id).ok
    ch = open_channel(store, task_id, channels)
    assert ch.state.paused
    # the wait ends at the deadline when nobody resumes
    state = ch.wait_while_paused(time.monotonic() + 0.2)
    assert state.paused and not state.stop


def test_wait_while_paused_ends_on_cancel(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING)
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
    task_id = make_task(store, Status.RUNNING)
    ch = open_channel(store, task_id, channels)
    # When garbage is published on its channel, followed by a real notice
    assert store.redis.publish(store.channel(task_id), data) == 1
    assert control.send_pause(store, task_id).ok
    # Then polling neither raises nor changes anything for the garbage (logged), and still applies the pause
    with caplog.at_level(logging.WARNING, logger="shared.control"):
        state = poll_until(ch, lambda st: st.status != "running")
    assert (state.status, state.pending, state.delivered) == ("paused", [], 0)
    assert [r.getMessage() for r in caplog.records if "malformed control notice" in r.getMessage()], caplog.text


def test_send_cancel_makes_the_worker_stop(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store, Status.RUNNING)
    ch = open_channel(store, task_id, channels)
    assert not ch.poll().stop
    result = control.send_cancel(store, task_id)
    assert result.ok
    state = poll_until(ch, lambda st: st.status != "running")
    assert state.stop and state.status == "cancelled"
    record = store.get(task_id)
    assert record is not None and (record["status"], record["exit_code"]) == ("cancelled", int(ExitCode.CANCELLED))
    end = store.read_events(task_id)[-1][1]
    assert end["type"] == "end" and end["exit_code"] == 4


def test_cancel_before_the_channel_exists_stops_at_once(store: TaskStore, channels: list[ControlChannel]) -> None:
    task_id = make_task(store)
    assert control.send_cancel(store, task_id).ok
    assert open_channel(store, task_id, channels).state.stop


def test_control_notices_carry_the_command_and_task(store: TaskStore) -> None:
    task_id = make_task(store, Status.RUNNING)
    sub = store.redis.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(store.channel(task_id))
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
    assert seen == [{"command": c, "task_id": task_id} for c in ("pause", "resume", "message", "cancel")]


def test_a_refused_pause_changes_and_publishes_nothing(store: TaskStore) -> None:
    task_id = make_task(store)  # queued: not running yet, so it cannot be paused
    sub = store.redis.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(store.channel(task_id))
    try:
        before = snapshot(store, task_id)
        result = control.send_pause(store, task_id)
        assert (result.ok, result.status) == (False, "queued")
        assert snapshot(store, task_id) == before
        assert store.redis.publish(store.channel(task_id), b"marker") == 1
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
    task_id = make_task(store, Status.PAUSED)
    assert control.send_resume(store, task_id).ok
    assert store.get(task_id)["status"] == "running"  # type: ignore[index]


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING])
def test_resume_of_a_task_that_is_not_paused_is_refused(store: TaskStore, status: Status) -> None:
    task_id = make_task(store, status)
    before = snapshot(store, task_id)
    result = control.send_resume(store, task_id)
    assert (result.ok, result.status) == (False, str(status))
    assert snapshot(store, task_id) == before
