"""Listing a tenant's tasks (GET /agent/tasks, bulk cancel by filter, batch summaries) from its Redis indexes.

A tenant's tasks are indexed in sorted sets scored by ``created_at`` (``Keys.index``): one per status, per batch,
and per metadata ``key=value``. There is no "all", kind or model index: each entry costs ~130 bytes per task, so a
list without a status filter merges the status indexes, and kind and model are checked on the records while
walking. Pages are newest first; the cursor is the position ``(created_at, task_id)`` of the page's last task.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared.states import TERMINAL, Status
from shared.store.keys import Keys
from shared.task import Task

PAGE_ROWS = 200
"""Index rows read per round trip once a walk goes past its first rows."""


@dataclass(frozen=True)
class TaskFilter:
    """Filters of GET /agent/tasks. Each given field must match; ``statuses`` matches any of them.
    Times are epoch seconds (``created_after`` exclusive, ``created_before`` inclusive)."""

    statuses: tuple[str, ...] = ()
    kind: str | None = None
    model: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    batch_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    wait_reason: str | None = None
    """Queued tasks whose ``wait_reason`` starts with this (checked by the caller's ``keep``, see
    :func:`list_tasks`)."""

    def driver_indexes(self, keys: Keys, tenant: str) -> list[str]:
        """The indexes whose merge holds every match: the most selective one the filter names."""
        if self.statuses:
            return [keys.index(tenant, "status", s) for s in self.statuses]
        if self.batch_id:
            return [keys.index(tenant, "batch", self.batch_id)]
        if self.metadata:
            return [keys.index(tenant, "meta", f"{self.metadata[0][0]}={self.metadata[0][1]}")]
        # every status: together they hold every task (there is no "all" index)
        return [keys.index(tenant, "status", s) for s in Status]

    @property
    def exact(self) -> bool:
        """The driving indexes alone answer the filter (every entry matches unless it expired)."""
        return not (self.kind or self.model or self.wait_reason) and (
            bool(self.statuses) + bool(self.batch_id) + len(self.metadata)) <= 1

    def matches(self, task: Task) -> bool:
        return ((not self.statuses or task.status in self.statuses)
                and (self.kind is None or task.kind == self.kind)
                and (self.model is None or task.model == self.model)
                and (self.batch_id is None or task.batch_id == self.batch_id)
                and all(task.metadata.get(k) == v for k, v in self.metadata))


CURSOR_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,20})?~[A-Za-z0-9_-]{1,100}$"
"""A cursor: ``<created_at>~<task id>``, the position of a page's last task (``created_at`` as the exact decimal
``repr`` of the float). Every string of this shape is a position to continue from, so the API documents the
pattern and refuses (422) only what does not match it."""


def encode_cursor(position: tuple[float, str]) -> str:
    """The cursor of ``(created_at, task_id)`` (:data:`CURSOR_PATTERN`)."""
    score = repr(float(position[0]))
    if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,20})?", score):  # not a plain decimal (never for epoch seconds)
        score = f"{position[0]:.6f}"
    return f"{score}~{position[1]}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor stands for. Raises ValueError for a malformed cursor."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValueError("malformed cursor")
    score, _, task_id = cursor.partition("~")
    return float(score), task_id


def _neg(task_id: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in task_id)


Keep = Callable[[Sequence[Task]], list[bool]]
"""A filter of a chunk of records that needs more than the records (the wait reason): which to keep."""


def list_tasks(client: redis.Redis, keys: Keys, tenant: str, filters: TaskFilter, limit: int,
               cursor: str | None = None, scan_budget: int = 5000,
               keep: Keep | None = None) -> tuple[list[Task], str | None]:
    """A page of the tenant's tasks matching ``filters``, newest first, and the cursor of the next page (None at
    the end).

    The most selective index drives the walk; other filters are checked on the records, fetched in pipelined
    chunks. A page costs O(limit) when the indexes answer the query, and at most ``scan_budget`` index entries
    otherwise (the page may then be short, with a cursor to go on). Ids whose records expired are pruned from
    the index as they are met; a task that changes status during the walk is shown once. ``keep``, when given,
    filters each chunk of matching records further.

    Raises:
        ValueError: a malformed cursor.
    """
    after = decode_cursor(cursor) if cursor else None
    drivers = filters.driver_indexes(keys, tenant)
    high = filters.created_before if filters.created_before is not None else float("inf")
    low = filters.created_after if filters.created_after is not None else float("-inf")  # exclusive (below)
    ceiling = min(high, after[0]) if after else high
    top = "+inf" if ceiling == float("inf") else repr(ceiling)
    bottom = f"({low!r}" if low != float("-inf") else "-inf"
    # when the indexes answer the query alone every entry is a match (unless expired): fetch what the page needs;
    # otherwise twice that, as records are then filtered
    factor = 1 if filters.exact else 2
    size = min(PAGE_ROWS, limit * factor)
    pipe = client.pipeline(transaction=True)  # the first rows of every index, in one consistent read
    for index in drivers:
        pipe.zrevrangebyscore(index, top, bottom, start=0, num=size, withscores=True)
    streams = [_walk(client, index, top, bottom, after, first, size)
               for index, first in zip(drivers, pipe.execute(), strict=True)]
    merged = heapq.merge(*streams, key=lambda e: (-e[0], _neg(e[1])))
    page: list[Task] = []
    last: tuple[float, str] | None = None
    scanned = 0
    chunk: list[tuple[float, str, str]] = []
    seen: set[str] = set()
    for entry in merged:
        if entry[1] in seen:  # it moved between two status indexes while we walked them
            continue
        seen.add(entry[1])
        chunk.append(entry)
        if len(chunk) >= min(max(limit - len(page), 1) * factor, PAGE_ROWS):
            last = _take(client, keys, chunk, filters, page, limit, keep) or last
            scanned += len(chunk)
            chunk = []
            if len(page) >= limit or scanned >= scan_budget:
                break
    else:
        if chunk:
            last = _take(client, keys, chunk, filters, page, limit, keep) or last
        if len(page) < limit:
            return page, None
    if len(page) >= limit:
        last = (page[-1].created_at, page[-1].task_id)
    return page, encode_cursor(last) if last else None


def _walk(client: redis.Redis, index: str, top: str, bottom: str, after: tuple[float, str] | None,
          first: list[Any], size: int) -> Iterator[tuple[float, str, str]]:
    """Entries of one index as ``(score, task id, index)``, newest first, strictly after the cursor. ``first`` is
    the answer to the first ``size`` rows (fetched for every index at once); later rows are read ``PAGE_ROWS`` at a
    time from the last score seen (not by offset: entries pruned or moved to another status meanwhile would shift
    an offset and skip live tasks)."""
    rows = cast(list[tuple[bytes, float]], first)
    last_score, ties = None, 0  # the lowest score read so far, and how many entries of it were read
    while rows:
        for member, score in rows:
            last_score, ties = (score, ties + 1) if score == last_score else (score, 1)
            task_id = member.decode()
            if after is not None and (score, task_id) >= after:
                continue  # at or before the cursor: equal scores are ordered by id, descending
            yield score, task_id, index
        if len(rows) < size:
            return
        size = PAGE_ROWS
        rows = cast(list[tuple[bytes, float]], client.zrevrangebyscore(
            index, repr(last_score), bottom, start=ties, num=size, withscores=True))


def _take(client: redis.Redis, keys: Keys, chunk: list[tuple[float, str, str]], filters: TaskFilter,
          page: list[Task], limit: int, keep: Keep | None = None) -> tuple[float, str] | None:
    """Fetch the records of ``chunk``, append the matches to ``page`` (up to ``limit``), prune expired ids;
    returns the position of the last entry looked at."""
    pipe = client.pipeline(transaction=False)
    for _score, task_id, _index in chunk:
        pipe.hgetall(keys.task(task_id))
    last = None
    gone: list[tuple[str, str]] = []
    found: list[tuple[tuple[float, str], Task]] = []
    for (score, task_id, index), raw in zip(chunk, pipe.execute(), strict=True):
        if not raw:
            gone.append((index, task_id))
        else:
            found.append(((score, task_id), Task.from_redis(task_id, raw)))
    kept = keep([task for _, task in found]) if keep is not None and found else [True] * len(found)
    for (position, task), wanted in zip(found, kept, strict=True):
        if len(page) >= limit:
            break
        last = position
        if wanted and filters.matches(task):
            page.append(task)
    if gone:
        prune = client.pipeline(transaction=False)
        for index, task_id in gone:
            prune.zrem(index, task_id)
        prune.execute()
    return last


def batch_counts(client: redis.Redis, keys: Keys, tenant: str, batch_id: str) -> dict[str, Any] | None:
    """Counts of a batch's tasks by status: ``{batch_id, total, counts: {status: n}, expired, ended, done}``
    (``done`` when every task ended or expired); None when the tenant has no such batch."""
    ids = cast(list[bytes], client.zrange(keys.index(tenant, "batch", batch_id), 0, -1))
    if not ids:
        return None
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(keys.task(task_id.decode()), "status")
    counts: dict[str, int] = {str(s): 0 for s in Status}
    expired = 0
    for status in pipe.execute():
        if status is None:
            expired += 1
        else:
            counts[status.decode()] += 1
    ended = sum(counts[str(s)] for s in TERMINAL) + expired
    return {"batch_id": batch_id, "total": len(ids), "counts": counts, "expired": expired, "ended": ended,
            "done": ended == len(ids)}
