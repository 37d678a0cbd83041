"""The per-process event fan-out (api/fanout.py EventHub) against a real Redis: order, late joiners, stalled
subscribers, many subscribers, a lost Redis connection, and the end of a task."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api import create_app, parse_gc_thresholds
from api.fanout import EventHub
from shared.settings import Settings
from shared.states import ExitCode, Status
from shared.store import TaskStore
from tests.api.test_routes import api_settings
from tests.conftest import make_task

pytestmark = pytest.mark.redis


@pytest.fixture
def hub(store: TaskStore) -> Iterator[EventHub]:
    h = EventHub(store, backlog=4, poll=0.5)
    yield h
    h.stop()


def running_task(store: TaskStore) -> str:
    return make_task(store, Status.RUNNING)


class Reader(threading.Thread):
    """Follows ``hub.frames`` in a thread, collecting (seq, event type, n) until the end or a deadline."""

    def __init__(self, hub: EventHub, task_id: str, after: int = 0, delay: float = 0.0):
        super().__init__(daemon=True)
        self.hub, self.task_id, self.after, self.delay = hub, task_id, after, delay
        self.seen: list[tuple[int, str, Any]] = []
        self.error: BaseException | None = None
        self.keepalives = 0

    def run(self) -> None:
        try:
            for delivery in self.hub.frames(self.task_id, self.after, keepalive=0.5):
                if delivery is None:
                    self.keepalives += 1
                    continue
                self.seen.append((delivery.seq, delivery.event["type"], delivery.event.get("n")))
                time.sleep(self.delay)
        except BaseException as exc:  # reported by the test
            self.error = exc


def bench_events(store: TaskStore, task_id: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        store.append_event(task_id, {"type": "bench", "n": i})


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_every_subscriber_gets_every_event_once_in_order_and_stops_at_the_end(store: TaskStore,
                                                                               hub: EventHub) -> None:
    task_id = running_task(store)
    readers = [Reader(hub, task_id) for _ in range(20)]
    for r in readers:
        r.start()
    wait_for(lambda: hub.subscribers == 20)
    bench_events(store, task_id, 30)
    store.finish(task_id, ExitCode.COMPLETED)
    for r in readers:
        r.join(10)
        assert not r.is_alive() and r.error is None
        seqs = [seq for seq, _, _ in r.seen]
        assert seqs == list(range(1, len(seqs) + 1))  # the derived first event, then every one, in order
        assert [n for _, kind, n in r.seen if kind == "bench"] == list(range(30))
        assert r.seen[-1][1] == "end"
    wait_for(lambda: hub.subscribers == 0)


def test_a_late_joiner_reads_what_it_missed_from_redis_then_follows_live(store: TaskStore, hub: EventHub) -> None:
    task_id = running_task(store)
    early = Reader(hub, task_id)
    early.start()
    wait_for(lambda: hub.subscribers == 1)
    bench_events(store, task_id, 10)  # more than the hub's backlog of 4
    wait_for(lambda: len(early.seen) >= 11)
    late = Reader(hub, task_id, after=3)  # as a client reconnecting with Last-Event-ID: 3
    late.start()
    wait_for(lambda: hub.subscribers == 2)
    bench_events(store, task_id, 5, start=10)
    store.finish(task_id, ExitCode.COMPLETED)
    for r in (early, late):
        r.join(10)
        assert r.error is None
    assert [seq for seq, _, _ in late.seen] == list(range(4, early.seen[-1][0] + 1))
    assert [n for _, kind, n in late.seen if kind == "bench"] == list(range(2, 15))


def test_a_stalled_subscriber_falls_back_to_redis_and_loses_nothing(store: TaskStore, hub: EventHub) -> None:
    task_id = running_task(store)
    slow, fast = Reader(hub, task_id, delay=0.05), Reader(hub, task_id)
    slow.start()
    fast.start()
    wait_for(lambda: hub.subscribers == 2)
    bench_events(store, task_id, 40)  # ten times the backlog, faster than the slow reader takes them
    store.finish(task_id, ExitCode.COMPLETED)
    for r in (slow, fast):
        r.join(20)
        assert r.error is None
        assert [n for _, kind, n in r.seen if kind == "bench"] == list(range(40))


def following(store: TaskStore, hub: EventHub, n: int) -> tuple[str, Reader]:
    """A running task, a reader following it, and ``n`` bench events the reader has seen."""
    task_id = running_task(store)
    reader = Reader(hub, task_id)
    reader.start()
    wait_for(lambda: hub.subscribers == 1)
    bench_events(store, task_id, n)
    wait_for(lambda: len(reader.seen) >= n + 1)
    return task_id, reader


def test_the_hub_resumes_after_losing_its_redis_connection(store: TaskStore, hub: EventHub) -> None:
    task_id, reader = following(store, hub, 3)
    # When Redis drops every client connection (the hub's pub/sub connection among them)
    store.redis.client_kill_filter(_type="pubsub")
    store.redis.client_kill_filter(_type="normal", skipme=True)
    bench_events(store, task_id, 3, start=3)
    store.finish(task_id, ExitCode.COMPLETED)
    reader.join(15)
    assert reader.error is None
    assert [n for _, kind, n in reader.seen if kind == "bench"] == list(range(6))


def test_an_event_pub_sub_missed_is_read_from_the_stream(store: TaskStore, hub: EventHub) -> None:
    task_id, reader = following(store, hub, 2)
    # an event that reaches the stream but not the channel (as across a pub/sub reconnect)
    seq = store.redis.hincrby(store.keys.task(task_id), "event_seq", 1)
    store.redis.xadd(store.keys.events(task_id), {"data": '{"type": "bench", "n": 2}'}, id=f"0-{seq}")
    bench_events(store, task_id, 1, start=3)  # the next one shows the gap
    wait_for(lambda: len(reader.seen) >= 5)
    # and one missed with nothing after it: found when the stream stays quiet for a keepalive
    seq = store.redis.hincrby(store.keys.task(task_id), "event_seq", 1)
    store.redis.xadd(store.keys.events(task_id), {"data": '{"type": "bench", "n": 4}'}, id=f"0-{seq}")
    wait_for(lambda: len(reader.seen) >= 6)
    store.finish(task_id, ExitCode.COMPLETED)
    reader.join(10)
    assert reader.error is None
    assert [n for _, kind, n in reader.seen if kind == "bench"] == [0, 1, 2, 3, 4]


def test_a_last_event_id_past_the_end_does_not_move_the_task_for_others(store: TaskStore, hub: EventHub) -> None:
    task_id = running_task(store)
    bench_events(store, task_id, 2)
    wild = Reader(hub, task_id, after=10**6)  # a client claiming to have seen a million events
    wild.start()
    wait_for(lambda: hub.subscribers == 1)
    honest = Reader(hub, task_id, after=3)
    honest.start()
    wait_for(lambda: hub.subscribers == 2)
    bench_events(store, task_id, 3, start=2)
    store.finish(task_id, ExitCode.COMPLETED)
    for r in (wild, honest):
        r.join(10)
        assert r.error is None and not r.is_alive()
        assert [n for _, kind, n in r.seen if kind == "bench"] == [2, 3, 4]  # both from now on, nothing lost
    assert honest.keepalives == 0


def test_subscribers_of_many_tasks_share_one_reader(store: TaskStore, hub: EventHub) -> None:
    before = {t for t in threading.enumerate() if t.name == "event-hub"}  # other tests' hubs, stopping
    tasks = [running_task(store) for _ in range(30)]
    readers = [Reader(hub, t) for t in tasks]
    for r in readers:
        r.start()
    wait_for(lambda: hub.subscribers == 30)
    assert len({t for t in threading.enumerate() if t.name == "event-hub"} - before) == 1
    for t in tasks:
        bench_events(store, t, 2)
        store.finish(t, ExitCode.COMPLETED)
    for r, t in zip(readers, tasks, strict=True):
        r.join(10)
        assert r.error is None and [n for _, kind, n in r.seen if kind == "bench"] == [0, 1], t


def test_a_quiet_stream_gets_keepalives_and_stops_when_the_task_is_gone(store: TaskStore, hub: EventHub) -> None:
    task_id = running_task(store)
    reader = Reader(hub, task_id)
    reader.start()
    wait_for(lambda: reader.keepalives >= 2)
    store.redis.delete(store.keys.task(task_id))  # expired
    reader.join(5)
    assert not reader.is_alive() and reader.error is None


# --- the hub writing to caught-up subscribers itself (api/sockets.py under gunicorn's gevent worker) -----------------
class PairWriter:
    """A DirectWriter on one end of a socket pair with small buffers (so the hub's writes fill it and come back
    partial); ``frame`` is the seq as a line padded to ``size`` bytes."""

    def __init__(self, size: int = 3000):
        import socket

        self.ours, self.theirs = socket.socketpair()
        for sock in (self.ours, self.theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.ours.setblocking(False)
        self.size = size
        self.key = f"pair {size}"
        self.direct_frames = 0

    def frame(self, delivery: Any) -> bytes:
        return f"{delivery.seq} {delivery.event['type']}".encode().ljust(self.size - 1, b".") + b"\n"

    def send(self, data: bytes) -> int:
        self.direct_frames += 1
        return self.ours.send(data)

    def send_all(self, data: bytes) -> None:
        import select

        view = memoryview(data)
        while view:
            select.select([], [self.ours], [], 5)
            try:
                view = view[self.ours.send(view):]
            except BlockingIOError:
                continue


def test_a_direct_writer_gets_every_frame_whole_and_in_order_even_when_its_socket_fills(
        store: TaskStore, hub: EventHub) -> None:
    # Given a subscriber whose connection the hub may write to, and a client reading it slowly
    task_id = running_task(store)
    writer = PairWriter()
    done = threading.Event()

    def follow() -> None:  # what the SSE route does with the frames the hub leaves it
        for delivery in hub.frames(task_id, 0, keepalive=0.3, writer=writer):
            writer.send_all(b"k".ljust(writer.size - 1, b".") + b"\n" if delivery is None else writer.frame(delivery))
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: hub.subscribers == 1)
    received = bytearray()

    def read(until: float) -> None:
        writer.theirs.settimeout(0.05)
        while time.monotonic() < until:
            try:
                chunk = writer.theirs.recv(1024)
            except TimeoutError:
                continue
            if not chunk:
                return
            received.extend(chunk)
            time.sleep(0.002)  # slower than the hub writes: its sends come back partial

    # When events come faster than the client reads, then stop, and the task ends
    bench_events(store, task_id, 60)
    store.finish(task_id, ExitCode.COMPLETED)
    read(time.monotonic() + 2)
    deadline = time.monotonic() + 20
    while not done.is_set() and time.monotonic() < deadline:
        read(time.monotonic() + 0.5)
    assert done.is_set(), "the stream did not end"
    read(time.monotonic() + 0.3)
    # Then the client got every frame once, whole, in order, ending with the end event; the hub wrote some itself
    lines = [line for line in bytes(received).split(b"\n") if line and not line.startswith(b"k")]
    assert all(len(line) == writer.size - 1 for line in lines)
    seqs = [int(line.split()[0]) for line in lines]
    assert seqs == list(range(1, 63)), seqs
    assert lines[-1].split()[1].startswith(b"end") and writer.direct_frames > 0


@pytest.mark.parametrize("position", ["at", "past"])
def test_a_last_event_id_at_or_past_the_end_of_a_finished_task_closes_at_once(store: TaskStore, hub: EventHub,
                                                                              position: str) -> None:
    # Given a finished task with 3 events (running, bench, end)
    task_id = running_task(store)
    bench_events(store, task_id, 1)
    store.finish(task_id, ExitCode.COMPLETED)
    last = store.last_seq(task_id)
    # When a client reattaches with Last-Event-ID at its end event, or past it, on a stream whose keepalive is an hour
    after = last if position == "at" else last + 100
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.extend(hub.frames(task_id, after, keepalive=3600)), daemon=True)
    reader.start()
    reader.join(30)  # a bound for a loaded machine; the stream used to idle for one keepalive before closing
    # Then the stream has closed with nothing to send, no keepalive, and no subscription left behind
    assert not reader.is_alive(), "the stream of a finished task did not close"
    assert seen == [] and hub.subscribers == 0


def test_a_finished_task_replays_its_tail_and_closes(store: TaskStore, hub: EventHub) -> None:
    task_id = running_task(store)
    bench_events(store, task_id, 3)
    store.finish(task_id, ExitCode.COMPLETED)
    # events: 1 status (running), 2-4 bench, 5 end
    seen = [(d.seq, d.event["type"]) for d in hub.frames(task_id, 2, keepalive=3600) if d is not None]
    assert seen == [(3, "bench"), (4, "bench"), (5, "end")]


class CountingWriter(PairWriter):
    """A PairWriter with room for every frame of a test (its client reads after the end), that counts the bench
    events the hub's own thread renders, and can be told to fail rendering."""

    def __init__(self, key: str, fail: bool = False):
        import socket

        super().__init__(size=200)
        for sock in (self.ours, self.theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.key, self.fail, self.hub_renders = key, fail, 0

    def frame(self, delivery: Any) -> bytes:
        if threading.current_thread().name == "event-hub" and delivery.event["type"] == "bench":
            self.hub_renders += 1
            if self.fail:
                raise RuntimeError("a rendering bug")
        return super().frame(delivery)


def follow_with(hub: EventHub, task_id: str, writer: PairWriter, done: threading.Event,
                keepalive: float = 0.3) -> None:
    def follow() -> None:
        for delivery in hub.frames(task_id, 0, keepalive=keepalive, writer=writer):
            if delivery is not None:
                writer.send_all(writer.frame(delivery))
        done.set()

    threading.Thread(target=follow, daemon=True).start()


def lines_of(writer: PairWriter, done: threading.Event) -> list[bytes]:
    writer.theirs.settimeout(0.2)
    received = bytearray()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            chunk = writer.theirs.recv(65536)
        except TimeoutError:
            if done.is_set():
                break
            continue
        if not chunk:
            break
        received.extend(chunk)
    return [line for line in bytes(received).split(b"\n") if line]


def test_the_hub_renders_each_event_once_for_every_writer_of_the_same_key(store: TaskStore, hub: EventHub) -> None:
    # Given three subscribers of one task the hub writes to: two whose writers share a rendering (key), one not
    task_id = running_task(store)
    writers = [CountingWriter("a"), CountingWriter("a"), CountingWriter("b")]
    done = [threading.Event() for _ in writers]
    for writer, event in zip(writers, done):
        follow_with(hub, task_id, writer, event)
    wait_for(lambda: hub.subscribers == 3)
    sent = 0
    while not all(writer.direct_frames for writer in writers):  # until the hub writes to all three itself
        assert sent < 50, "the subscribers never all got an event from the hub"
        bench_events(store, task_id, 1, start=sent)
        sent += 1
        time.sleep(0.05)
    renders = [writer.hub_renders for writer in writers]
    frames = [writer.direct_frames for writer in writers]
    # When five more events arrive, one at a time, and the task ends
    for i in range(5):
        bench_events(store, task_id, 1, start=sent + i)
        wait_for(lambda i=i: all(w.direct_frames >= n + i + 1 for w, n in zip(writers, frames)))
    store.finish(task_id, ExitCode.COMPLETED)
    # Then the hub rendered each of them once per key, not once per subscriber; and each client got every event
    first, second, own = (writer.hub_renders - n for writer, n in zip(writers, renders))
    assert (first + second, own) == (5, 5), (first, second, own)
    for writer, event in zip(writers, done):
        seqs = [int(line.split()[0]) for line in lines_of(writer, event)]
        assert seqs == list(range(1, store.last_seq(task_id) + 1)), seqs


def test_a_rendering_failure_hands_the_subscriber_back_without_stopping_the_hub(
        store: TaskStore, hub: EventHub) -> None:
    # Given two subscribers of one task, one whose rendering fails on the hub's thread (keepalives of a minute: a
    # hub that died would leave both streams silent that long)
    task_id = running_task(store)
    broken, fine = CountingWriter("broken", fail=True), CountingWriter("fine")
    done = [threading.Event(), threading.Event()]
    follow_with(hub, task_id, broken, done[0], keepalive=60)
    follow_with(hub, task_id, fine, done[1], keepalive=60)
    wait_for(lambda: hub.subscribers == 2)
    # When events arrive until the hub has tried to write to both, then two more, and the task ends
    sent = 0
    while not (broken.hub_renders and fine.direct_frames):
        assert sent < 50, "the hub never wrote to both subscribers"
        bench_events(store, task_id, 1, start=sent)
        sent += 1
        time.sleep(0.05)
    bench_events(store, task_id, 2, start=sent)
    store.finish(task_id, ExitCode.COMPLETED)
    # Then both clients got every event in order at once (the broken one's written by its own subscriber)
    for writer, event in ((broken, done[0]), (fine, done[1])):
        seqs = [int(line.split()[0]) for line in lines_of(writer, event)]
        assert seqs == list(range(1, store.last_seq(task_id) + 1)), seqs


def test_the_api_sets_its_garbage_collector_thresholds_from_the_setting(settings: Settings) -> None:
    before = gc.get_threshold()
    try:
        create_app(test_config=api_settings(settings, api_gc_thresholds=" 5000, 15,50 "))
        assert gc.get_threshold() == (5000, 15, 50)
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("value", ["", "10000,20", "10000,20,100,5", "a,b,c", "0,10,10", "10000,-1,10", "1.5,2,3",
                                   "10000000000,20,100"])
def test_unusable_gc_thresholds_are_refused_naming_the_variable(settings: Settings, value: str) -> None:
    with pytest.raises(ValueError, match="LODESTAR_API_GC_THRESHOLDS"):
        parse_gc_thresholds(value)
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="LODESTAR_API_GC_THRESHOLDS"):
        create_app(test_config=api_settings(settings, api_gc_thresholds=value))
    assert gc.get_threshold() == before
