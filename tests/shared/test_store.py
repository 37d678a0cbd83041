"""TaskStore (records, transitions, events, leases) on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from shared import control
from shared.settings import Settings
from shared.states import EXIT_STATUS, TERMINAL, TRANSITIONS, ExitCode, Status
from shared.store import TaskStore, now
from tests.conftest import make_task, snapshot

pytestmark = pytest.mark.redis


# --- the record ---------------------------------------------------------------------------------------------------
def test_a_record_stores_neither_its_id_nor_implied_values_and_reads_back_whole(store: TaskStore) -> None:
    task_id = make_task(store)  # steps_taken 0 and metadata {} are implied values
    raw = store.redis.hgetall(store.keys.task(task_id))
    assert not {b"task_id", b"steps_taken", b"metadata", b"priority", b"persistent"} & set(raw)
    record = store.get(task_id)
    assert record is not None
    assert (record.task_id, record.steps_taken, record.metadata, record.priority,
            record.persistent, record.screenshot_mode) == (task_id, 0, {}, "normal", False, "url")
    record.metadata["x"] = "1"  # the implied dict is a fresh copy per record
    assert store.get(task_id).metadata == {}
    other = make_task(store, priority="high", metadata={"a": "1"}, persistent=True, stream_mode="concise")
    back = store.get(other)
    assert back is not None
    assert (back.priority, back.metadata, back.persistent, back.stream_mode) == (
        "high", {"a": "1"}, True, "concise")
    # And status moves keep the indexes right, with the id taken from the key
    store.claim(task_id, "w1")
    assert store.count("t_test", "running") == 1 and store.count("t_test", "queued") == 1


def test_pages_skip_no_live_task_when_expired_ids_are_pruned_on_the_way(store: TaskStore) -> None:
    from shared.store import TaskFilter

    ids = [make_task(store) for _ in range(1500)]  # newest last
    expired = set(ids[::7]) | set(ids[-400:-300])  # their records are gone; the index still names them
    for task_id in expired:
        store.redis.delete(store.keys.task(task_id))
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page, cursor = store.list_tasks("t_test", TaskFilter(statuses=("queued",)), 50, cursor)
        seen += [t.task_id for t in page]
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
    assert record is not None and record.status == str(to) and record.message == "moved"
    events = store.read_events(task_id)
    assert [seq for seq, _ in events] == [1, 2]
    assert events[-1][1] == {**events[-1][1], "type": "status", "status": str(to), "task_id": task_id,
                             "source": "test"}


def test_transition_of_a_missing_task_is_not_found(store: TaskStore) -> None:
    result = store.transition("task_nope", Status.RUNNING)
    assert (result.found, result.ok) == (False, False)
    assert store.redis.exists(store.keys.task("task_nope")) == 0


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
    assert store.redis.exists(store.keys.lease(task_id)) == 1
    # When it finishes
    before = now()
    result = store.finish(task_id, ExitCode.COMPLETED, result="the answer")
    # Then the record holds the exit code, result and finish time
    assert result.ok and result.seq == 4
    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.exit_code, record.result, record.error) == (
        "completed", 0, "the answer", None)
    assert before <= record.finished_at <= now()
    # And the last event is the end event
    seq, last = store.read_events(task_id)[-1]
    assert seq == 4 and last["type"] == "end" and last["exit_code"] == 0 and last["status"] == "completed"
    assert last["result"] == "the answer" and last["task_id"] == task_id
    # And every key of the task expires after the retention period; the lease is gone
    for key in (store.keys.task(task_id), store.keys.events(task_id), store.keys.inbox(task_id),
                store.keys.shots(task_id)):
        ttl = store.redis.ttl(key)
        assert 0 < ttl <= settings.task_retention, (key, ttl)
    assert store.redis.exists(store.keys.lease(task_id)) == 0


@pytest.mark.parametrize("code", list(ExitCode))
def test_finish_maps_each_exit_code_to_its_status(store: TaskStore, code: ExitCode) -> None:
    task_id = make_task(store, Status.RUNNING)
    assert store.finish(task_id, code, error="e").ok
    record = store.get(task_id)
    assert record is not None and (record.status, record.exit_code) == (str(EXIT_STATUS[code]), int(code))


def test_finish_of_a_queued_task_only_for_codes_allowed_from_queued(store: TaskStore) -> None:
    task_id = make_task(store, Status.QUEUED)
    assert not store.finish(task_id, ExitCode.COMPLETED).ok  # queued -> completed is not in the table
    assert store.get(task_id).status == "queued"
    assert store.finish(task_id, ExitCode.CANCELLED).ok
    assert store.get(task_id).status == "cancelled"


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
    assert store.get(task_id).event_seq == 3
    assert store.get(task_id).steps_taken == 2
    assert all(e["task_id"] == task_id for _, e in store.read_events(task_id))


def test_append_event_to_a_missing_task_returns_zero(store: TaskStore) -> None:
    assert store.append_event("task_gone", {"type": "step"}) == 0
    assert store.redis.exists(store.keys.events("task_gone")) == 0


# --- claims and leases --------------------------------------------------------------------------------------------
def test_claim_outcomes_through_a_task_life(store: TaskStore, settings: Settings) -> None:
    assert settings.max_attempts == 2
    task_id = make_task(store)
    lease = store.keys.lease(task_id)
    # started: queued -> running, attempt 1, lease held by w1
    assert store.claim(task_id, "w1") == ("started", "running", 1)
    record = store.get(task_id)
    assert record is not None and record.status == "running" and record.worker == "w1"
    assert record.started_at is not None and record.attempt == 1
    assert store.redis.get(lease) == b"w1"
    assert 0 < store.redis.pttl(lease) <= settings.lease_ttl * 1000
    # leased: a second worker while w1's lease lives
    assert store.claim(task_id, "w2") == ("leased", "running", 0)
    assert store.get(task_id).attempt == 1
    # restarted: w1's lease expired (deleted here), w2 takes over on attempt 2
    store.redis.delete(lease)
    assert store.claim(task_id, "w2") == ("restarted", "running", 2)
    assert store.redis.get(lease) == b"w2" and store.get(task_id).worker == "w2"
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
    assert store.redis.exists(store.keys.task("task_missing")) == 0


def test_claim_of_a_paused_task_after_a_worker_loss_keeps_it_paused(store: TaskStore) -> None:
    task_id = make_task(store)
    assert store.claim(task_id, "w1")[0] == "started"
    assert control.send_pause(store, task_id).ok
    store.redis.delete(store.keys.lease(task_id))
    assert store.claim(task_id, "w2") == ("restarted", "paused", 2)
    assert store.get(task_id).status == "paused"


def test_renew_lease_only_for_its_holder(store: TaskStore, settings: Settings) -> None:
    task_id = make_task(store)
    lease = store.keys.lease(task_id)
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
