"""TaskStore (records, transitions, events, leases) on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from shared.settings import Settings
from shared.states import EXIT_STATUS, TERMINAL, TRANSITIONS, ExitCode, Status
from shared.store import LeaseLost, TaskStore, now, now_ms
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
    # only a requeue goes back to queued: a lost worker, a hand-back, a resume of a released task
    assert {s for s, targets in TRANSITIONS.items() if Status.QUEUED in targets} == {Status.RUNNING, Status.PAUSED}
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
    task_id = make_task(store)
    assert store.inject(task_id, "hello").ok
    store.put_screenshot(task_id, 1, b"\xff\xd8jpeg")
    assert store.claim(task_id, "w1")[0] == "started"
    assert store.redis.exists(store.keys.lease(task_id)) == 1
    # When it finishes
    before = now()
    result = store.finish(task_id, ExitCode.COMPLETED, result="the answer")
    # Then the record holds the exit code, result and finish time
    assert result.ok and result.seq == 4 and result.delivery_id is None  # no webhook_url: no delivery
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
    assert store.redis.zscore(store.keys.leases, task_id) is None  # the reaper will not look at it again


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
    task_id = make_task(store)
    lease = store.keys.lease(task_id)
    # started: queued -> running, attempt 1, lease held by w1 and indexed by its expiry
    assert store.claim(task_id, "w1") == ("started", "running", 1)
    record = store.get(task_id)
    assert record.status == "running" and record.worker == "w1" and record.started_at is not None
    assert record.attempt == 1
    assert store.redis.get(lease) == b"w1"
    assert 0 < store.redis.pttl(lease) <= settings.lease_ttl * 1000
    assert store.redis.zscore(store.keys.leases, task_id) >= now_ms()
    # held: the same worker again (a claim retried after a lost reply) changes nothing
    assert store.claim(task_id, "w1") == ("held", "running", 1)
    # leased: a second worker while w1's lease lives (a message delivered twice): nothing changes
    assert store.claim(task_id, "w2") == ("leased", "running", 1)
    assert store.get(task_id).attempt == 1
    # orphaned: w1's lease expired; a stray message does not restart it (the reaper requeues it)
    store.redis.delete(lease)
    assert store.claim(task_id, "w2") == ("orphaned", "running", 1)
    assert store.redis.exists(lease) == 0 and store.get(task_id).worker == "w1"
    # every start was logged as a status event with its worker and attempt
    starts = [e for _, e in store.read_events(task_id) if e.get("worker")]
    assert [(e["worker"], e["attempt"], e["status"]) for e in starts] == [("w1", 1, "running")]
    # ended: once finished, nobody claims it
    assert store.finish(task_id, ExitCode.WORKER_LOST, error="lost").ok
    assert store.claim(task_id, "w4") == ("ended", "failed", 0)


def test_claim_of_a_missing_task(store: TaskStore) -> None:
    assert store.claim("task_missing", "w1") == ("missing", "", 0)
    assert store.redis.exists(store.keys.task("task_missing")) == 0


def test_renew_lease_only_for_its_holder(store: TaskStore, settings: Settings) -> None:
    task_id = make_task(store)
    lease = store.keys.lease(task_id)
    assert store.claim(task_id, "w1")[0] == "started"
    store.redis.pexpire(lease, 500)
    store.redis.zadd(store.keys.leases, {task_id: now_ms() + 500})
    # the holder renews to a full lease_ttl, in the lease and in the index; another worker cannot
    assert store.renew_lease(task_id, "w1") is True
    assert store.redis.pttl(lease) > 500
    assert store.redis.zscore(store.keys.leases, task_id) > now_ms() + 600
    assert store.renew_lease(task_id, "w2") is False
    assert store.redis.get(lease) == b"w1"
    # release by a non-holder is a no-op; by the holder it frees the task and its index entry
    assert store.release_lease(task_id, "w2") is False
    assert store.redis.get(lease) == b"w1"
    assert store.release_lease(task_id, "w1") is True
    assert store.redis.exists(lease) == 0 and store.redis.zscore(store.keys.leases, task_id) is None
    assert store.renew_lease(task_id, "w1") is False
    assert store.redis.exists(lease) == 0


# --- fencing --------------------------------------------------------------------------------------------------------
def test_a_worker_that_lost_its_lease_can_neither_write_a_step_nor_end_the_task(store: TaskStore) -> None:
    # Given a task held by w1, whose lease expired and which w2 now holds
    task_id = make_task(store)
    assert store.claim(task_id, "w1")[0] == "started"
    assert store.record_step(task_id, 1, b"jpeg", {"steps_taken": 1}, {"type": "step", "step": 1},
                             holder="w1").ok
    store.redis.set(store.keys.lease(task_id), "w2")
    before = snapshot(store, task_id)
    # When w1 writes its next step, then tries to end the task
    with pytest.raises(LeaseLost):
        store.record_step(task_id, 2, b"jpeg", {"steps_taken": 2}, {"type": "step", "step": 2}, holder="w1")
    result = store.finish(task_id, ExitCode.COMPLETED, result="w1's answer", holder="w1")
    # Then nothing of it is written (fencing), and w2 can still end it
    assert result.lost and not result.ok
    assert snapshot(store, task_id) == before
    assert store.finish(task_id, ExitCode.COMPLETED, result="w2's answer", holder="w2").ok
    assert [e["type"] for _, e in store.read_events(task_id)].count("end") == 1


def test_a_step_written_twice_is_recorded_once(store: TaskStore) -> None:
    # a worker's retry after a lost reply (Redis restarting) sends the same step again
    task_id = make_task(store)
    store.claim(task_id, "w1")
    for _ in range(2):
        assert store.record_step(task_id, 1, b"jpeg", {"steps_taken": 1}, {"type": "step", "step": 1},
                                 holder="w1").ok
    assert [e["type"] for _, e in store.read_events(task_id)] == ["status", "status", "step"]


# --- recovery: requeue, hand back, resume, the outbox ----------------------------------------------------------------
def test_the_reaper_requeues_a_running_task_whose_lease_expired(store: TaskStore) -> None:
    # Given a running task whose worker died (its lease expired; the index still names it)
    task_id = make_task(store)
    store.claim(task_id, "w1")
    store.redis.delete(store.keys.lease(task_id))
    # When the reaper looks for expired leases
    expired = store.recovery.expired_leases(now_ms() + store.settings.lease_ttl * 1000 + 1)
    assert expired == [task_id]
    outcome = store.recovery.requeue(task_id, "lost", "its worker was lost")
    # Then the task is queued again, with its run message due, the attempt it used counted, and an event
    assert (outcome.outcome, outcome.status, outcome.attempt) == ("requeued", "queued", 1)
    task = store.get(task_id)
    assert (task.status, task.worker, task.attempt, task.message) == ("queued", None, 1, "its worker was lost")
    assert store.count("t_test", "queued") == 1 and store.count("t_test", "running") == 0
    assert store.recovery.due_dispatch(now_ms() + 1) == [task_id]
    assert store.recovery.expired_leases(now_ms() + 10**9) == []
    last = store.read_events(task_id)[-1][1]
    assert (last["status"], last["reason"], last["attempt"]) == ("queued", "its worker was lost", 1)
    # And its next claim is attempt 2, which takes it out of the outbox
    assert store.claim(task_id, "w2") == ("started", "running", 2)
    assert store.recovery.due_dispatch(now_ms() + 1) == []


def test_the_reaper_leaves_a_live_lease_alone_and_fixes_its_index(store: TaskStore) -> None:
    task_id = make_task(store)
    store.claim(task_id, "w1")
    store.redis.zadd(store.keys.leases, {task_id: 1})  # an index entry older than the lease (renewed meanwhile)
    assert store.recovery.requeue(task_id, "lost", "x").outcome == "alive"
    assert store.get(task_id).status == "running"
    assert store.redis.zscore(store.keys.leases, task_id) > now_ms()


def test_a_task_lost_on_its_last_attempt_is_not_requeued(store: TaskStore, settings: Settings) -> None:
    task_id = make_task(store, Status.RUNNING, attempt=settings.max_attempts)
    assert store.recovery.requeue(task_id, "lost", "x").outcome == "exhausted"
    assert store.get(task_id).status == "running"  # the reaper ends it (exit code 6)


def test_a_paused_task_whose_worker_is_lost_stays_paused_with_no_worker(store: TaskStore) -> None:
    task_id = make_task(store, Status.PAUSED, attempt=1)
    outcome = store.recovery.requeue(task_id, "lost", "its worker was lost")
    assert (outcome.outcome, outcome.status) == ("released", "paused")
    task = store.get(task_id)
    assert (task.status, task.worker) == ("paused", None)
    assert store.recovery.due_dispatch(now_ms() + 1) == []  # nothing runs until a resume


def test_a_hand_back_gives_the_attempt_back_and_only_the_holder_can_do_it(store: TaskStore) -> None:
    task_id = make_task(store)
    assert store.claim(task_id, "w1") == ("started", "running", 1)
    assert store.recovery.requeue(task_id, "handback", "shutting down", worker="w2").outcome == "lost"
    outcome = store.recovery.requeue(task_id, "handback", "its worker shut down", worker="w1")
    assert (outcome.outcome, outcome.attempt) == ("requeued", 0)
    assert store.redis.exists(store.keys.lease(task_id)) == 0
    assert store.claim(task_id, "w2") == ("started", "running", 1)  # the same attempt number again


def test_a_retry_after_an_environment_crash_counts_the_attempt(store: TaskStore) -> None:
    task_id = make_task(store)
    store.claim(task_id, "w1")
    assert store.recovery.requeue(task_id, "retry", "the browser crashed", worker="w1").attempt == 1
    assert store.claim(task_id, "w2") == ("started", "running", 2)


def test_the_dispatch_outbox_empties_when_messages_are_sent(store: TaskStore) -> None:
    task_id = make_task(store)
    store.claim(task_id, "w1")
    store.recovery.requeue(task_id, "handback", "x", worker="w1")
    assert store.recovery.outbox_size() == 1
    store.recovery.dispatched([task_id])
    assert store.recovery.outbox_size() == 0


def test_the_reaper_lock_has_one_holder_at_a_time(store: TaskStore) -> None:
    assert store.recovery.take_lock("a", 10_000) and store.recovery.take_lock("a", 10_000)
    assert not store.recovery.take_lock("b", 10_000)
    store.recovery.drop_lock("b")  # not b's to drop
    assert not store.recovery.take_lock("b", 10_000)
    store.recovery.drop_lock("a")
    assert store.recovery.take_lock("b", 10_000)


# --- the webhook outbox ----------------------------------------------------------------------------------------------
def test_a_task_that_ends_puts_its_webhook_delivery_in_the_outbox_in_the_same_write(store: TaskStore) -> None:
    task_id = make_task(store, webhook_url="http://hooks.test/")
    store.claim(task_id, "w1")
    result = store.finish(task_id, ExitCode.COMPLETED, result="done", holder="w1")
    assert result.ok and result.delivery_id
    assert store.deliveries.due(now_ms() + 1) == [result.delivery_id]
    delivery = store.deliveries.take(result.delivery_id, now_ms(), 30_000)
    assert (delivery.task_id, delivery.tenant, delivery.event, delivery.attempt) == (
        task_id, "t_test", "task.completed", 1)
    # taken: nobody else sends it while its sender's claim lasts...
    assert store.deliveries.take(result.delivery_id, now_ms(), 30_000) is None
    # ...unless the sender died: then it is due again and the reaper hands it out with a token
    later = now_ms() + 31_000
    assert store.deliveries.due(later) == [result.delivery_id]
    tokens = store.deliveries.hand([result.delivery_id], later + 60_000)
    assert store.deliveries.take(result.delivery_id, later, 30_000, token="wrong") is None
    again = store.deliveries.take(result.delivery_id, later, 30_000, token=tokens[result.delivery_id])
    assert again is not None and again.delivery_id == result.delivery_id  # the same id on every try
    store.deliveries.retry(result.delivery_id, 2, later + 2000)
    assert store.deliveries.take(result.delivery_id, later + 2000, 30_000).attempt == 2
    store.deliveries.done(result.delivery_id)
    assert store.deliveries.pending() == 0
    assert store.deliveries.hand([result.delivery_id], later) == {}  # gone: nothing handed, nothing recreated
    assert not store.redis.exists(store.keys.delivery(result.delivery_id))
