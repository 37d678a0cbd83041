"""Running an evaluation through the HTTP API: submit the episodes in batches, follow them, relaunch system failures.

A user's client would do the same: ``POST /agent/tasks/batch`` (each task with an ``idempotency_key``, so a retried
submission never runs an episode twice), ``GET /agent/batches/{id}`` to see how many ended, and
``GET /agent/tasks?batch_id=`` to read the records of a batch whose count moved. An episode that ended for a system
reason (exit code 5: the browser could not start or crashed; 6: its worker died too often) is submitted once more as
a new task on the same seed; an agent's own failure (any other exit code) never is.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import requests
from tqdm import tqdm

SYSTEM_EXIT_CODES = frozenset({5, 6})
"""Exit codes that are the system's fault, not the agent's (``shared.states.ExitCode``: ENVIRONMENT_ERROR,
WORKER_LOST). An episode that ends with one is relaunched once."""

TERMINAL_STATUSES = ("completed", "failed", "cancelled", "timed_out")


@dataclass(frozen=True)
class Subject:
    """Who plays the episodes: an offline agent (sent as ``agent_type``) or a model (sent as ``model``).

    ``kind`` is "agent" or "model".
    """

    name: str
    kind: str

    def task_fields(self) -> dict[str, str]:
        """The start parameters that choose this agent or model."""
        return {"agent_type": self.name} if self.kind == "agent" else {"model": self.name}


def subject(name: str, kind: str | None = None) -> Subject:
    """The ``Subject`` called ``name``. ``kind`` ("agent" / "model", from ``--agent`` / ``--model``) wins; without
    it (``--compare A B``) the offline agents' names (``shared.task.OFFLINE_AGENTS``: scripted, heuristic) are agents
    and any other name is a model."""
    from shared.task import OFFLINE_AGENTS

    return Subject(name, kind or ("agent" if name in OFFLINE_AGENTS else "model"))


@dataclass
class Episode:
    """One attempt at one episode: ``subject`` plays ``family`` with ``seed`` (``repeat``: which of the repeats of
    that seed; ``attempt``: 1, or 2 for a relaunch). ``record`` is the task's JSON as the API last answered it;
    ``previous`` the attempt this one relaunched."""

    subject: Subject
    family: str
    seed: int
    repeat: int
    episode_id: str
    attempt: int = 1
    task_id: str = ""
    batch_id: str = ""
    submit_error: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    previous: Episode | None = None

    @property
    def key(self) -> tuple[str, str, int, int]:
        """What identifies the episode across attempts and subjects: (subject, family, seed, repeat)."""
        return self.subject.name, self.family, self.seed, self.repeat

    @property
    def exit_code(self) -> int | None:
        code = self.record.get("exit_code")
        return int(code) if code is not None else None

    @property
    def ended(self) -> bool:
        """The task ended (it has an exit code) or was never accepted."""
        return self.exit_code is not None or self.submit_error is not None

    @property
    def system_failure(self) -> bool:
        return self.exit_code in SYSTEM_EXIT_CODES

    def relaunch(self) -> Episode:
        """A second attempt on the same seed, as a new task (a new episode id, so its page reports apart)."""
        return Episode(self.subject, self.family, self.seed, self.repeat, f"{self.episode_id}-r", attempt=2,
                       previous=self)


@dataclass(frozen=True)
class RunOptions:
    """How episodes are submitted and followed.

    ``page_url(episode)``: the seeded page the task starts on; ``max_steps`` and ``max_seconds`` (the task's
    ``max_duration_seconds``) bound each task; ``window``: at most this many of the run's tasks queued or running
    at once (None: submit everything at once); ``timeout``: seconds for the whole run (then the rest is cancelled);
    ``poll``: seconds between looks at the batches; ``chunk``: tasks per batch request.
    """

    instruction: str
    page_url: Callable[[Episode], str]
    run_id: str
    max_steps: int = 15
    max_seconds: int = 60
    viewport: tuple[int, int] = (640, 480)
    window: int | None = None
    timeout: float = 4 * 3600
    poll: float = 0.5
    chunk: int = 100
    submit_attempts: int = 5


class Runner:
    """Submits episodes to the API at ``base_url`` with ``session`` (its ``Authorization`` header set) and follows
    them to their end with a progress bar on ``out``; see :meth:`run`."""

    def __init__(self, session: requests.Session, base_url: str, options: RunOptions, out: TextIO | None = None):
        self.session = session
        self.base = base_url.rstrip("/")
        self.options = options
        self.out = out or sys.stderr
        self._active: dict[str, list[Episode]] = {}  # batch id -> its episodes not yet ended
        self._seen: dict[str, int] = {}  # batch id -> its "ended" count when last listed
        self._loose: list[Episode] = []  # accepted as reused (an earlier request's task): followed one by one
        self.counts: Counter[str] = Counter()
        """Statuses of the unfinished tasks of the batches looked at last (for the progress bar)."""
        self.ended: Counter[str] = Counter()
        """Final statuses of the attempts that ended so far (a relaunched attempt counts once per attempt)."""

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self, episodes: list[Episode]) -> list[Episode]:
        """Submit ``episodes``, follow them to the end, relaunch (once) those that ended with exit code 5 or 6.

        Returns the last attempt of each episode, in the order given (a relaunch in place of its first attempt;
        ``previous`` links back). Episodes still running at ``timeout`` are cancelled and returned without an exit
        code. Ctrl-C cancels the run's unfinished tasks, then raises ``KeyboardInterrupt``.
        """
        final = {e.key: e for e in episodes}
        todo: deque[Episode] = deque(episodes)
        deadline = time.monotonic() + self.options.timeout
        bar = tqdm(total=len(episodes), unit="ep", desc="episodes", file=self.out, mininterval=1.0, dynamic_ncols=True)
        try:
            while todo or self._in_flight():
                if time.monotonic() > deadline:
                    tqdm.write(f"the run passed its timeout ({self.options.timeout:.0f} s): cancelling the rest",
                               file=self.out)
                    self._cancel_in_flight()
                    break
                self._submit_some(todo, bar)
                for episode in self._follow():
                    bar.update(1)
                    self.ended[episode.record.get("status") or "not submitted"] += 1
                    if episode.system_failure and episode.attempt == 1:
                        again = episode.relaunch()
                        final[again.key] = again
                        todo.append(again)
                        bar.total += 1
                        tqdm.write(f"relaunching {episode.family} seed {episode.seed} ({episode.subject.name}): exit "
                                   f"code {episode.exit_code}: {episode.record.get('error') or ''}"[:200],
                                   file=self.out)
                c, e = self.counts, self.ended
                bar.set_postfix_str(f"queued {c['queued']} running {c['running'] + c['paused']} | ended: completed "
                                    f"{e['completed']} failed {e['failed'] + e['timed_out'] + e['cancelled']}",
                                    refresh=False)
                if todo or self._in_flight():
                    time.sleep(self.options.poll)
        except KeyboardInterrupt:
            self._cancel_in_flight()
            raise
        finally:
            bar.close()
        return [final[e.key] for e in episodes]

    def _in_flight(self) -> int:
        return sum(len(v) for v in self._active.values()) + len(self._loose)

    # -- submitting ------------------------------------------------------------------------------------------------
    def _body(self, episode: Episode) -> dict[str, Any]:
        o = self.options
        return {"instruction": o.instruction, **episode.subject.task_fields(), "kind": "browser",
                "start_url": o.page_url(episode), "max_steps": o.max_steps, "max_duration_seconds": o.max_seconds,
                "viewport_width": o.viewport[0], "viewport_height": o.viewport[1],
                "idempotency_key": f"{o.run_id}:{episode.episode_id}",
                "metadata": {"bench": "eval-miniwob", "run": o.run_id, "family": episode.family,
                             "seed": str(episode.seed), "repeat": str(episode.repeat),
                             "subject": episode.subject.name, "attempt": str(episode.attempt),
                             "episode": episode.episode_id}}

    def _submit_some(self, todo: deque[Episode], bar: tqdm[Any]) -> None:
        room = len(todo) if self.options.window is None else self.options.window - self._in_flight()
        while todo and room > 0:
            chunk = [todo.popleft() for _ in range(min(room, self.options.chunk, len(todo)))]
            room -= len(chunk)
            self._submit(chunk)
            for episode in chunk:
                if episode.submit_error is not None:
                    bar.update(1)
                    tqdm.write(f"not submitted: {episode.family} seed {episode.seed}: {episode.submit_error}"[:300],
                               file=self.out)

    def _submit(self, chunk: list[Episode]) -> None:
        """POST one batch; retried on 429, 5xx and connection errors (the idempotency keys make that safe)."""
        body = {"tasks": [self._body(e) for e in chunk]}
        error = "not sent"
        for attempt in range(self.options.submit_attempts):
            try:
                resp = self.session.post(f"{self.base}/agent/tasks/batch", json=body, timeout=120)
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
                time.sleep(min(2 ** attempt, 30))
                continue
            if resp.status_code in (200, 422) and "batch_id" in (answer := resp.json()):
                self._accept(chunk, answer)
                return
            error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if resp.status_code != 429 and resp.status_code < 500:
                break
            time.sleep(min(_retry_after(resp) or 2 ** attempt, 30))
        for episode in chunk:
            episode.submit_error = error

    def _accept(self, chunk: list[Episode], answer: dict[str, Any]) -> None:
        batch_id = answer["batch_id"]
        mine: list[Episode] = []
        for row in answer.get("tasks", []):
            episode = chunk[row["index"]]
            episode.task_id, episode.batch_id = row["task_id"], batch_id
            (self._loose if row.get("reused") else mine).append(episode)
        for err in answer.get("errors", []):
            chunk[err["index"]].submit_error = f"refused: {err['error'].get('message', err['error'])}"
        if mine:
            self._active[batch_id] = mine
            self._seen[batch_id] = -1

    # -- following -------------------------------------------------------------------------------------------------
    def _get(self, path: str, **params: Any) -> dict[str, Any] | None:
        """GET a JSON answer, or None on any failure (the next round asks again)."""
        try:
            resp = self.session.get(f"{self.base}{path}", params=params, timeout=60)
        except requests.RequestException:
            return None
        return resp.json() if resp.ok else None

    def _follow(self) -> list[Episode]:
        """One look at every active batch (and reused task); returns the episodes that ended since the last."""
        ended: list[Episode] = []
        self.counts = Counter()
        for batch_id in list(self._active):
            summary = self._get(f"/agent/batches/{batch_id}")
            if summary is None:
                continue
            self.counts.update(summary.get("counts", {}))
            if summary.get("ended", 0) != self._seen[batch_id]:
                ended += self._list_batch(batch_id, summary.get("ended", 0))
        for episode in list(self._loose):
            record = self._get(f"/agent/tasks/{episode.task_id}")
            if record is not None:
                episode.record = record
                self.counts[record.get("status", "?")] += 1
                if episode.ended:
                    self._loose.remove(episode)
                    ended.append(episode)
        return ended

    def _list_batch(self, batch_id: str, ended_count: int) -> list[Episode]:
        by_task = {e.task_id: e for e in self._active[batch_id]}
        cursor = None
        while True:
            page = self._get("/agent/tasks", batch_id=batch_id, limit=500, **({"cursor": cursor} if cursor else {}))
            if page is None:
                return []  # listed again next round
            for record in page.get("data", []):
                if record.get("task_id") in by_task:
                    by_task[record["task_id"]].record = record
            cursor = page.get("next_cursor")
            if not cursor:
                break
        self._seen[batch_id] = ended_count
        done = [e for e in self._active[batch_id] if e.ended]
        self._active[batch_id] = [e for e in self._active[batch_id] if not e.ended]
        if not self._active[batch_id]:
            del self._active[batch_id], self._seen[batch_id]
        return done

    def _cancel_in_flight(self) -> None:
        ids = [e.task_id for eps in self._active.values() for e in eps] + [e.task_id for e in self._loose]
        for start in range(0, len(ids), 10_000):
            try:
                self.session.post(f"{self.base}/agent/tasks/cancel", json={"task_ids": ids[start:start + 10_000]},
                                  timeout=60)
            except requests.RequestException as exc:
                print(f"could not cancel the run's tasks: {exc}", file=self.out)


def _retry_after(resp: requests.Response) -> float | None:
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


def plan(subjects: Iterable[Subject], families: list[str], first_seed: int, episodes: int, repeats: int,
         run_id: str) -> list[Episode]:
    """Every episode of the run: for each seed ``first_seed .. first_seed + episodes - 1``, repeat and family,
    one per subject (interleaved, so subjects compared on the same seed run side by side)."""
    subjects = list(subjects)
    return [Episode(s, family, seed, repeat, f"{run_id}-{s.name}-{family}-{seed}-{repeat}".replace("/", "_"))
            for seed in range(first_seed, first_seed + episodes) for repeat in range(repeats)
            for family in families for s in subjects]
