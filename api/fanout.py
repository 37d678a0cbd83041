"""Per-API-process Redis readers shared by every request that waits on a task: no polling, no reader per client.

- :class:`EndWatcher` (long-poll ``/wait``): ``TaskStore.finish`` publishes the id of each task that ends on
  ``P:ended``; the watcher listens there and sets the ``threading.Event`` of every request waiting on that id.
- :class:`EventHub` (SSE and WebSocket event streams): one thread reads the Redis Streams of every task that has a
  subscriber in this process with a single ``XREAD BLOCK`` over all of them, renders each event once, and puts it
  on each subscriber's queue.

A thousand waiting or streaming clients cost one Redis connection and one reader thread per API process, plus
each client's own request thread (or greenlet).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import redis

if TYPE_CHECKING:
    from shared.store import TaskStore

log = logging.getLogger(__name__)


class EndWatcher:
    """Wakes waiters when a task ends. Thread-safe; the listener thread starts on the first :meth:`wait`."""

    def __init__(self, store: TaskStore):
        self._store = store
        self._channel = store.keys.ended
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
            pubsub = self._store.pubsub(ignore_subscribe_messages=True)
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


class Delivery:
    """One task event as delivered to every subscriber of the task in this process.

    ``seq`` is the event's sequence number (its Redis Stream id is ``0-<seq>``), ``event`` the decoded event dict
    (shared: do not modify it). :meth:`rendered` memoizes what the route makes of it, so a thousand subscribers
    with the same rendering (same base URL) cost one render.
    """

    __slots__ = ("_rendered", "event", "seq")

    def __init__(self, seq: int, event: dict[str, Any]):
        self.seq = seq
        self.event = event
        self._rendered: dict[str, bytes] = {}

    @property
    def is_end(self) -> bool:
        return self.event.get("type") == "end"

    def rendered(self, key: str, render: Callable[[], bytes]) -> bytes:
        """``render()`` the first time for ``key``, the same bytes afterwards (thread-safe: a race renders twice)."""
        data = self._rendered.get(key)
        if data is None:
            data = self._rendered[key] = render()
        return data


class DirectWriter(Protocol):
    """A subscriber's connection that the hub may write events to itself, from its own thread, while the
    subscriber is caught up: one non-blocking send per event and subscriber instead of waking the subscriber to
    write it (under gevent, a greenlet switch, the response generator and the WSGI server's write: about twice the
    CPU, the events row of docs/performance.md).
    Only for connections nothing else writes to while the hub holds them (the hub writes only between two of the
    subscriber's own writes).

    ``key`` names the rendering: writers with the same key put the same bytes on the wire for a delivery, so the
    hub calls :meth:`frame` once per key and delivery, however many subscribers share it.
    """

    key: str

    def frame(self, delivery: Delivery) -> bytes | None:
        """The bytes that put ``delivery`` on the wire (None: the hub must not write this one: the subscriber will)."""
        ...

    def send(self, data: bytes) -> int:
        """One non-blocking send; returns how many bytes were taken. Raises BlockingIOError when the socket buffer
        is full (nothing taken), another OSError when the connection is gone."""
        ...

    def send_all(self, data: bytes) -> None:
        """Send all of ``data`` (blocking the subscriber only). Raises OSError when the connection is gone."""
        ...


class _Direct:
    """One subscriber the hub writes to (see :class:`DirectWriter`) until it hands it ``back``: ``after`` is the
    last seq on the wire, ``pending`` the rest of a frame the socket did not take, ``done`` the end was written or
    the connection is gone."""

    __slots__ = ("after", "back", "done", "pending", "writer")

    def __init__(self, writer: DirectWriter, after: int):
        self.writer, self.after = writer, after
        self.back = threading.Event()
        self.pending = b""
        self.done = False


class _Feed:
    """The hub's state for one task: the last ``backlog`` deliveries, and ``changed``, an Event that is set (and
    replaced by a fresh one) each time deliveries are added, so that one ``set()`` wakes every subscriber without
    them contending for a lock (under gevent, ``threading.Event`` is gevent's); ``direct``: the subscribers the hub
    writes to itself."""

    __slots__ = ("changed", "direct", "last", "recent", "subscribers", "task_id")

    def __init__(self, task_id: str, last: int, backlog: int):
        self.task_id = task_id
        self.last = last  # the highest seq the hub has delivered (or the first subscriber had already read)
        self.recent: deque[Delivery] = deque(maxlen=backlog)
        self.changed = threading.Event()
        self.subscribers = 0
        self.direct: list[_Direct] = []

    def after(self, seq: int) -> list[Delivery]:
        """Buffered deliveries with seq > ``seq``, oldest first."""
        recent = self.recent
        if not recent or recent[-1].seq <= seq:
            return []
        if len(recent) == 1 or recent[-2].seq <= seq:  # the usual case: one new event
            return [recent[-1]]
        fresh = []
        for delivery in list(reversed(recent)):  # a copy: the hub thread may append meanwhile
            if delivery.seq <= seq:
                break
            fresh.append(delivery)
        fresh.reverse()
        return fresh


class EventHub:
    """Fans task events out to every SSE/WebSocket subscriber in this process.

    Every event is appended to its task's Redis Stream (the record) and, in the same Lua call, published on a
    pub/sub channel named like the stream, as ``"<seq> <event json>"`` (``shared/store.py``). One daemon thread
    here (started with the first subscriber) holds one pub/sub connection subscribed to the channels of the tasks
    that have subscribers in this process, so each event costs O(1) whatever the number of tasks followed.
    Each event is decoded once, appended to its task's feed (the last ``backlog`` events, so memory stays
    bounded) and every subscriber of the task is woken by one ``Event.set()``; each keeps its own position (a
    seq). Pub/sub can miss messages (before a subscription takes effect, across a reconnect), so the stream
    fills every gap: after Redis confirms a subscription the hub reads the stream from the feed's last seq, a
    message whose seq skips ahead makes it read the gap, and a subscriber that falls behind the buffer (a
    stalled client), joins behind the hub, or sees nothing for ``keepalive`` seconds while Redis has newer
    events reads from the stream itself.
    """

    def __init__(self, store: TaskStore, backlog: int = 256, poll: float = 1.0):
        self._store = store
        self._backlog = backlog
        self._poll = poll
        self._feeds: dict[str, _Feed] = {}  # by stream key, which is also the pub/sub channel
        self._dirty = False  # feeds were added or removed since the hub last (un)subscribed
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._wake_channel = store.keys.hub(f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    # -- subscriber side ---------------------------------------------------------------------------------------------
    def frames(self, task_id: str, after: int, keepalive: float,
               writer: DirectWriter | None = None) -> Iterator[Delivery | None]:
        """Yield the task's events with seq > ``after`` in order, until its ``end`` event; yield None after each
        ``keepalive`` seconds without one (and stop if the task ended or expired meanwhile).

        With ``writer``, whenever the subscriber is caught up the hub writes the next events to it itself (they are
        not yielded) until a write would block (the rest of that frame is sent here, then events are yielded again)
        or the end is written (the generator returns) or the connection is gone (it returns too).

        Raises ``redis.RedisError`` when Redis is unreachable for a read this subscriber makes itself (the first
        read, a catch-up, the end check).
        """
        store = self._store
        # a client's Last-Event-ID past the task's last event would set the position of everyone's feed
        after = min(after, store.last_seq(task_id))
        for seq, event in store.read_events(task_id, after):  # what is already there, read directly
            after = seq
            yield Delivery(seq, event)
            if event.get("type") == "end":
                return
        status = store.status(task_id)
        if status is None or status.ended:  # a finished task (or a Last-Event-ID at its end): nothing more will come
            for seq, event in store.read_events(task_id, after):  # what landed between the read and the check
                yield Delivery(seq, event)
            return
        feed = self._join(task_id, after)
        try:
            while True:
                changed = feed.changed  # taken before reading ``last``: a later delivery sets this one
                if feed.last <= after:
                    if writer is not None:
                        after, done = self._follow_directly(feed, writer, after, keepalive)
                        if done:
                            return
                    else:
                        changed.wait(keepalive)
                last, fresh = feed.last, feed.after(after)
                if last > after and (not fresh or fresh[0].seq > after + 1):  # behind the buffer: read Redis
                    batch = store.read_events(task_id, after)
                    if batch:
                        fresh = [Delivery(seq, event) for seq, event in batch]
                    elif not fresh:  # trimmed from the stream (MAXLEN) before we read them: gone
                        after = last
                if not fresh:  # quiet for ``keepalive`` s: has the task ended, or did the hub miss something?
                    current = store.get(task_id)
                    if current is None:
                        return
                    if current.event_seq > after:
                        fresh = [Delivery(seq, event) for seq, event in store.read_events(task_id, after)]
                    if not fresh:
                        if current.ended:
                            return
                        yield None
                        continue
                for delivery in fresh:
                    after = delivery.seq
                    yield delivery
                    if delivery.is_end:
                        return
        finally:
            self._leave(feed)

    def _follow_directly(self, feed: _Feed, writer: DirectWriter, after: int, keepalive: float) -> tuple[int, bool]:
        """Let the hub write the feed's next events to ``writer`` until it hands the subscriber back or
        ``keepalive`` seconds pass; returns ``(seq of the last event on the wire, done)``."""
        direct = _Direct(writer, after)
        with self._lock:
            if feed.last > after:  # something arrived meanwhile: the subscriber reads it itself
                return after, False
            feed.direct.append(direct)
        try:
            direct.back.wait(keepalive)
        finally:
            with self._lock:  # the hub writes under this lock: after it, nothing writes to this connection but us
                if direct in feed.direct:
                    feed.direct.remove(direct)
        if direct.pending and not direct.done:
            try:
                writer.send_all(direct.pending)
            except OSError:
                return direct.after, True
        return direct.after, direct.done

    def _write_direct(self, feed: _Feed, deliveries: list[Delivery]) -> None:
        """Write ``deliveries`` to the feed's direct subscribers (under the lock); hand back those whose socket
        did not take a whole frame, whose connection is gone, or that got the end event.

        The per-subscriber work is one dict lookup and one ``send``: with 1000 subscribers of one task each event
        is 1000 sends in a row, and what the loop adds to them is the events row's latency (docs/performance.md).
        """
        with self._lock:
            for delivery in deliveries:
                if not feed.direct:
                    return
                seq, end = delivery.seq, delivery.is_end
                frames: dict[str, bytes | None] = {}  # by writer key: rendered once for every subscriber
                back: list[_Direct] = []
                for direct in feed.direct:
                    if direct.after >= seq:
                        continue
                    writer = direct.writer
                    try:
                        data = frames[writer.key]
                    except KeyError:
                        data = frames[writer.key] = self._frame(writer, delivery)
                    if data is None:
                        back.append(direct)
                        continue
                    try:
                        sent = writer.send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:  # the client left
                        direct.done = True
                        back.append(direct)
                        continue
                    except Exception:  # a writer's bug must not stop the hub: the subscriber writes it itself
                        log.exception("event hub: a direct write failed; handing the subscriber back")
                        back.append(direct)
                        continue
                    direct.after = seq
                    if sent < len(data):  # the socket is full: the subscriber sends the rest, blocking itself
                        direct.pending = data[sent:]
                        back.append(direct)
                    elif end:
                        direct.done = True
                        back.append(direct)
                if back:
                    handed = set(back)
                    feed.direct = [direct for direct in feed.direct if direct not in handed]
                    for direct in back:
                        direct.back.set()

    @staticmethod
    def _frame(writer: DirectWriter, delivery: Delivery) -> bytes | None:
        """``writer.frame(delivery)``; None (the subscriber writes it itself) when rendering fails: a rendering
        bug must not stop the hub."""
        try:
            return writer.frame(delivery)
        except Exception:
            log.exception("event hub: rendering a frame failed; handing its subscribers back")
            return None

    def _join(self, task_id: str, after: int) -> _Feed:
        key = self._store.keys.events(task_id)
        with self._lock:
            feed = self._feeds.get(key)
            new = feed is None
            if feed is None:
                feed = self._feeds[key] = _Feed(task_id, after, self._backlog)
                self._dirty = True
            feed.subscribers += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
                self._thread.start()
        if new:
            self._wake()
        return feed

    def _leave(self, feed: _Feed) -> None:
        with self._lock:
            feed.subscribers -= 1
            key = self._store.keys.events(feed.task_id)
            if not feed.subscribers and self._feeds.get(key) is feed:
                del self._feeds[key]
                self._dirty = True  # unsubscribed at the hub's next turn; no need to wake it

    def _wake(self) -> None:
        """Make the hub's wait for a message return, so that it subscribes to the new task's channel now."""
        try:
            self._store.publish(self._wake_channel, "1")
        except redis.RedisError as exc:  # the hub subscribes within ``poll`` seconds anyway
            log.warning("event hub: wake-up failed (%s)", exc)

    @property
    def subscribers(self) -> int:
        """Subscribers in this process right now (all tasks)."""
        with self._lock:
            return sum(feed.subscribers for feed in self._feeds.values())

    # -- the reader thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            pubsub = self._store.pubsub()
            subscribed: dict[str, _Feed] = {}
            try:
                pubsub.subscribe(self._wake_channel)
                with self._lock:
                    self._dirty = True  # (re)subscribe to every feed's channel
                while not self._stopped.is_set():
                    self._sync(pubsub, subscribed)
                    message = pubsub.get_message(timeout=self._poll)
                    if message is not None:
                        self._handle(message)
            except redis.RedisError as exc:
                log.warning("event hub lost Redis (%s); reconnecting", exc)
                time.sleep(0.5)
            finally:
                pubsub.close()

    def _sync(self, pubsub: Any, subscribed: dict[str, _Feed]) -> None:
        """Subscribe to the channels of new feeds and leave those of feeds that have no subscriber left."""
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            wanted = dict(self._feeds)
        gone = [key for key in subscribed if key not in wanted]
        new = [key for key in wanted if key not in subscribed]
        if gone:
            pubsub.unsubscribe(*gone)
        if new:
            pubsub.subscribe(*new)  # each confirmation makes _handle read the stream (see below)
        for key in gone:
            del subscribed[key]
        for key, feed in wanted.items():
            if key in subscribed and subscribed[key] is not feed:  # a feed that ended and began again between two
                self._catch_up(feed)  # turns: still subscribed, so what it missed is in the stream only
            subscribed[key] = feed

    def _handle(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if channel == self._wake_channel:
            return
        with self._lock:
            feed = self._feeds.get(channel)
        if feed is None:
            return
        if message["type"] == "subscribe":  # from now on every event arrives here: read what came before
            self._catch_up(feed)
            return
        if message["type"] != "message":
            return
        head, _, body = message["data"].partition(b" ")
        seq = int(head)
        if seq <= feed.last:
            return
        if seq > feed.last + 1:  # a message was missed: the stream has it
            self._catch_up(feed)
            return
        self._deliver(feed, [Delivery(seq, json.loads(body))])

    def _catch_up(self, feed: _Feed) -> None:
        while True:
            batch = self._store.read_events(feed.task_id, feed.last)
            self._deliver(feed, [Delivery(seq, event) for seq, event in batch])
            if len(batch) < 500:
                return

    def _deliver(self, feed: _Feed, deliveries: list[Delivery]) -> None:
        deliveries = [d for d in deliveries if d.seq > feed.last]  # only the hub's thread writes a feed
        if deliveries:
            feed.recent.extend(deliveries)
            feed.last = deliveries[-1].seq
            changed, feed.changed = feed.changed, threading.Event()
            changed.set()
            self._write_direct(feed, deliveries)  # checks feed.direct under the lock: a subscriber joining now
            # either saw ``last`` move (and reads the event itself) or is in the list

    def stop(self) -> None:
        """Stop the reader thread (at once when Redis is reachable, else within ``poll`` seconds)."""
        self._stopped.set()
        if self._thread is not None:
            self._wake()
