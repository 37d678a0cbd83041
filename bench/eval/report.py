"""The evaluation's report: per-family and overall rows with Wilson intervals, the paired comparison, and the files.

Each episode is scored from the page's own report (``bench.miniwob``'s reward board): success is a raw reward of
1 (``WOB_RAW_REWARD_GLOBAL``), reward is ``WOB_REWARD_GLOBAL`` (time-discounted, in [-1, 1]). An episode the page
never scored (the agent stopped before the page ended it, or the task never ran) counts as a failure with reward
-1, what the page itself gives an episode that runs out of time. The agent's own claim of success is never used.

Files written by :func:`write_files` into the output folder:

- ``report.json``: ``run`` (what was run), ``families`` (one row per subject and family), ``overall`` (one row per
  subject), ``comparison`` (null unless two subjects were compared) and ``episodes`` (one object per episode);
- ``report.csv``: the rows of ``families`` then ``overall`` (family "all"), columns :data:`CSV_COLUMNS`;
- ``success.png``: success per family with its interval, one bar per subject (matplotlib).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.eval.run import Episode, Subject
from bench.eval.stats import PairedDifference, paired_difference, wilson_interval

UNSCORED_REWARD = -1.0
"""Reward of an episode the page never scored: what MiniWoB++ gives an episode that runs out of time."""

CSV_COLUMNS = ("subject", "kind", "family", "episodes", "successes", "rate", "ci_low", "ci_high", "mean_reward",
               "mean_steps", "mean_seconds", "cost_usd", "relaunched", "system_failures", "unscored", "unfinished")


@dataclass(frozen=True)
class Score:
    """One episode's score from its page: ``success`` (raw reward 1), ``reward`` (``UNSCORED_REWARD`` when the page
    sent none), ``raw`` (None when unscored)."""

    success: bool
    reward: float
    raw: float | None

    @property
    def scored(self) -> bool:
        return self.raw is not None


def score(page_report: dict[str, Any] | None) -> Score:
    """The score of an episode from what its page reported (``{"reward", "raw", "reason"}``) or None."""
    if not page_report:
        return Score(False, UNSCORED_REWARD, None)
    raw = float(page_report.get("raw") or 0.0)
    return Score(raw >= 1.0 - 1e-9, float(page_report.get("reward") or 0.0), raw)


@dataclass
class Row:
    """One line of the report: a subject on one family (or ``family == "all"``). Rates and bounds in [0, 1];
    ``mean_seconds`` is from the task's start to its end; ``cost_usd`` sums the tasks' ``cost`` (relaunched
    attempts included; None when no task had a price); ``relaunched``: episodes run a second time after exit code
    5 or 6; ``system_failures``: episodes whose last attempt still ended with 5 or 6 (counted as failures);
    ``unscored``: episodes the page never scored; ``unfinished``: tasks without an end (refused, or cancelled at
    the run's timeout)."""

    subject: str
    kind: str
    family: str
    episodes: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float
    mean_reward: float
    mean_steps: float
    mean_seconds: float | None
    cost_usd: float | None
    relaunched: int
    system_failures: int
    unscored: int
    unfinished: int
    statuses: dict[str, int] = field(default_factory=dict)


def task_seconds(record: dict[str, Any]) -> float | None:
    """Seconds from the task's ``started_at`` to its ``finished_at`` (ISO 8601), or None when either is missing."""
    from datetime import datetime

    start, end = record.get("started_at"), record.get("finished_at")
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _costs(episode: Episode) -> list[float]:
    out = []
    attempt: Episode | None = episode
    while attempt is not None:
        if attempt.record.get("cost") is not None:
            out.append(float(attempt.record["cost"]))
        attempt = attempt.previous
    return out


def make_row(subject: Subject, family: str, episodes: list[Episode], scores: list[Score],
             confidence: float) -> Row:
    """The row of ``episodes`` (their ``scores`` in the same order)."""
    n = len(episodes)
    ok = sum(s.success for s in scores)
    low, high = wilson_interval(ok, n, confidence)
    seconds = [x for e in episodes if (x := task_seconds(e.record)) is not None]
    costs = [c for e in episodes for c in _costs(e)]
    statuses: dict[str, int] = defaultdict(int)
    for e in episodes:
        statuses[e.record.get("status") or ("refused" if e.submit_error else "unfinished")] += 1
    return Row(subject.name, subject.kind, family, n, ok, ok / n if n else 0.0, low, high,
               statistics.mean(s.reward for s in scores) if n else 0.0,
               statistics.mean(int(e.record.get("steps_taken") or 0) for e in episodes) if n else 0.0,
               statistics.mean(seconds) if seconds else None, sum(costs) if costs else None,
               sum(1 for e in episodes if e.previous is not None), sum(1 for e in episodes if e.system_failure),
               sum(1 for s in scores if not s.scored), sum(1 for e in episodes if not e.ended or e.submit_error),
               dict(statuses))


@dataclass
class Report:
    """Everything the report says; built by :func:`build`."""

    run: dict[str, Any]
    families: list[Row]
    overall: list[Row]
    comparison: dict[str, Any] | None
    episodes: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "families": [asdict(r) for r in self.families],
                "overall": [asdict(r) for r in self.overall], "comparison": self.comparison,
                "episodes": self.episodes}


def _difference_json(d: PairedDifference) -> dict[str, Any]:
    return {"pairs": d.n, "rate_a": d.rate_a, "rate_b": d.rate_b, "difference": d.difference, "ci_low": d.low,
            "ci_high": d.high, "both": d.both, "a_only": d.a_only, "b_only": d.b_only, "neither": d.neither}


def build(episodes: list[Episode], subjects: list[Subject], families: list[str],
          page_report: Callable[[Episode], dict[str, Any] | None], run: dict[str, Any],
          confidence: float = 0.95) -> Report:
    """Score ``episodes`` (the last attempt of each) and summarise them per subject and family, overall, and, for
    two subjects, as the paired difference of the first's success minus the second's on the same
    (family, seed, repeat)."""
    scores = {id(e): score(page_report(e)) for e in episodes}
    rows: list[Row] = []
    overall: list[Row] = []
    for s in subjects:
        mine = [e for e in episodes if e.subject.name == s.name]
        for family in families:
            group = [e for e in mine if e.family == family]
            rows.append(make_row(s, family, group, [scores[id(e)] for e in group], confidence))
        overall.append(make_row(s, "all", mine, [scores[id(e)] for e in mine], confidence))
    comparison = None
    if len(subjects) == 2:
        a, b = subjects
        by_key = {e.key: scores[id(e)].success for e in episodes}
        pairs: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        for e in episodes:
            if e.subject.name == a.name:
                other = (b.name, e.family, e.seed, e.repeat)
                if other in by_key:
                    pairs[e.family].append((by_key[e.key], by_key[other]))
        comparison = {"a": a.name, "b": b.name, "confidence": confidence,
                      "families": {f: _difference_json(paired_difference(pairs[f], confidence)) for f in families},
                      "overall": _difference_json(paired_difference([p for f in families for p in pairs[f]],
                                                                    confidence))}
    per_episode = []
    for e in episodes:
        sc = scores[id(e)]
        per_episode.append({
            "subject": e.subject.name, "family": e.family, "seed": e.seed, "repeat": e.repeat, "attempt": e.attempt,
            "task_id": e.task_id, "status": e.record.get("status"), "exit_code": e.exit_code,
            "success": sc.success, "reward": sc.reward, "raw_reward": sc.raw, "steps": e.record.get("steps_taken"),
            "seconds": task_seconds(e.record), "cost_usd": e.record.get("cost"), "error": e.record.get("error"),
            "submit_error": e.submit_error,
            "relaunched_after": ({"task_id": e.previous.task_id, "exit_code": e.previous.exit_code,
                                  "error": e.previous.record.get("error")} if e.previous else None)})
    return Report(run, rows, overall, comparison, per_episode)


# -- files ----------------------------------------------------------------------------------------------------------
def write_files(report: Report, out: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.csv`` and ``success.png`` into ``out`` (created if missing); returns their
    paths by name. matplotlib (the ``bench`` extra) is imported here only."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "report.csv", "png": out / "success.png"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in [*report.families, *report.overall]:
            values = asdict(row)
            writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
    write_chart(report, paths["png"])
    return paths


def write_chart(report: Report, path: Path) -> None:
    """A horizontal bar chart of success per family (one bar per subject) with the Wilson interval as error bars,
    the overall rate in the legend; saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = [r.subject for r in report.overall]
    families = list(dict.fromkeys(r.family for r in report.families))
    k = max(len(subjects), 1)
    height = 1.8 + 0.25 * k + len(families) * (0.14 + 0.12 * k)
    fig, ax = plt.subplots(figsize=(8.5, height), layout="constrained")
    bar = 0.8 / k
    for i, (name, total) in enumerate(zip(subjects, report.overall)):
        rows = [r for r in report.families if r.subject == name]
        ys = [j + (i - (k - 1) / 2) * bar for j in range(len(rows))]
        rates = [r.rate * 100 for r in rows]
        errors = [[(r.rate - r.ci_low) * 100 for r in rows], [(r.ci_high - r.rate) * 100 for r in rows]]
        ax.barh(ys, rates, height=bar * 0.9, xerr=errors, error_kw={"elinewidth": 0.7, "capsize": 1.5},
                label=f"{name}: {total.rate:.0%} overall [{total.ci_low:.0%}, {total.ci_high:.0%}], "
                      f"n={total.episodes}")
    ax.set_yticks(range(len(families)))
    ax.set_yticklabels(families, fontsize=7 if len(families) > 30 else 9)
    ax.set_ylim(len(families) - 0.5, -0.5)  # first family on top, no empty margin
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"success (%), error bars: {report.run.get('confidence', 0.95):.0%} Wilson interval")
    per = report.run.get("episodes_per_family", "?")
    ax.set_title(f"MiniWoB++ success per family ({per} episodes each)", fontsize=11)
    ax.grid(axis="x", linewidth=0.3)
    fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the printed tables ---------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x:.0%}"


def _opt(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table(report: Report) -> str:
    """The report as text: per subject a table of families and its overall line, then the paired comparison."""
    lines: list[str] = []
    conf = f"{report.run.get('confidence', 0.95):.0%} CI"
    for total in report.overall:
        lines.append(f"{total.subject} ({total.kind})")
        lines.append(f"{'family':<28} {'episodes':>8} {'success':>8} {conf:>13} {'reward':>7} {'steps':>6} "
                     f"{'seconds':>8} {'cost $':>8} {'relaunched':>10}")
        for r in [*[x for x in report.families if x.subject == total.subject], total]:
            lines.append(f"{r.family:<28} {r.episodes:>8} {_pct(r.rate):>8} "
                         f"{'[' + _pct(r.ci_low) + ', ' + _pct(r.ci_high) + ']':>13} {r.mean_reward:>7.2f} "
                         f"{r.mean_steps:>6.1f} {_opt(r.mean_seconds, '.2f'):>8} {_opt(r.cost_usd, '.4f'):>8} "
                         f"{r.relaunched:>10}")
        lines.append(f"relaunched after a system failure (exit code 5 or 6): {total.relaunched}; still failed for "
                     f"a system reason: {total.system_failures}; not scored by the page: {total.unscored}; "
                     f"unfinished or refused: {total.unfinished}")
        lines.append("")
    if report.comparison:
        c = report.comparison
        lines.append(f"paired difference {c['a']} - {c['b']} (same families, seeds and repeats)")
        lines.append(f"{'family':<28} {'pairs':>6} {c['a'][:10]:>10} {c['b'][:10]:>10} {'difference':>11} "
                     f"{conf:>15}")
        for name, d in [*c["families"].items(), ("all", c["overall"])]:
            interval = f"[{d['ci_low'] * 100:+.0f}%, {d['ci_high'] * 100:+.0f}%]"
            lines.append(f"{name:<28} {d['pairs']:>6} {_pct(d['rate_a']):>10} {_pct(d['rate_b']):>10} "
                         f"{d['difference'] * 100:>+10.0f}% {interval:>15}")
        lines.append("")
    return "\n".join(lines)
