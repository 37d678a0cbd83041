"""``lodestar eval miniwob``: an evaluation of agents or models on the MiniWoB++ suite, through the HTTP API.

1. Serve the task pages of the ``miniwob`` package with ``bench.miniwob``'s reward reporter (each page seeds its
   RNG from ``?seed=`` and sends its own reward to this process when it ends the episode).
2. Submit, for each family, seed (``--seed`` .. ``--seed + --episodes - 1``) and repeat, one task per subject
   (``--agent``, ``--model``, or both names of ``--compare A B``), follow them with a progress bar, and relaunch once
   the episodes that ended for a system reason (exit code 5 or 6): ``run.py``.
3. Score each episode from its page's report and write the report (``report.py``): a table on stdout, and
   ``report.json``, ``report.csv`` and ``success.png`` in ``--out``. Success rates carry 95% Wilson intervals, and
   a comparison the paired difference with Newcombe's interval (``stats.py``).

Against a running deployment with ``--url`` / ``--key`` (its workers must reach ``--serve-host``); otherwise it
starts its own stack for the run (``lodestar.stack.running_stack``) with ``--concurrency`` browser slots.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import requests

from bench.eval.report import build, table, write_files
from bench.eval.run import Episode, Runner, RunOptions, Subject, plan, subject
from bench.miniwob import resolve_families, serve_miniwob

DEFAULT_SLOTS = 2
"""Browser slots of the stack the command starts when ``--concurrency`` is not given."""


def subjects_of(args: argparse.Namespace) -> list[Subject]:
    """The agents or models to run: ``--compare A B``, else ``--model``, else ``--agent`` (default heuristic).

    Raises:
        ValueError: ``--compare`` names the same subject twice.
    """
    if args.compare:
        a, b = (subject(name) for name in args.compare)
        if a.name == b.name:
            raise ValueError("--compare needs two different agents or models")
        return [a, b]
    if args.model:
        return [subject(args.model, "model")]
    return [subject(args.agent or "heuristic", "agent")]


def evaluate(base_url: str, key: str, args: argparse.Namespace, subjects: list[Subject],
             families: list[str]) -> int:
    """Run the evaluation against the API at ``base_url``; prints the table, writes the files into ``args.out``.

    Returns 0, or 1 when an episode was refused or left unfinished, or the first subject's overall success is
    below ``--min-success``; 130 after Ctrl-C (the run's unfinished tasks are cancelled, no report is written).
    """
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    window = args.concurrency if args.url and args.concurrency else None
    started = time.monotonic()
    with serve_miniwob(args.serve_host, args.serve_port) as (pages, board):

        def page_url(episode: Episode) -> str:
            query = urllib.parse.urlencode({"seed": episode.seed, "episode": episode.episode_id})
            return f"{pages}/miniwob/{episode.family}.html?{query}"

        options = RunOptions(instruction=args.instruction, page_url=page_url, run_id=run_id,
                             max_steps=args.max_steps, max_seconds=args.max_seconds, window=window,
                             timeout=args.timeout)
        episodes = plan(subjects, families, args.seed, args.episodes, args.repeats, run_id)
        who = " vs ".join(f"{s.name} ({s.kind})" for s in subjects)
        print(f"{who}: {len(families)} families x {args.episodes} seeds x {args.repeats} repeats = "
              f"{len(episodes)} episodes", flush=True)
        try:
            finals = Runner(session, base_url, options).run(episodes)
        except KeyboardInterrupt:
            print("\ninterrupted: the run's unfinished tasks were cancelled; no report written", file=sys.stderr)
            return 130
        wall = time.monotonic() - started
        run = {"suite": "miniwob", "run_id": run_id, "url": base_url, "instruction": args.instruction,
               "subjects": [{"name": s.name, "kind": s.kind} for s in subjects], "families_run": families,
               "first_seed": args.seed, "episodes_per_family": args.episodes * args.repeats,
               "seeds_per_family": args.episodes, "repeats": args.repeats, "max_steps": args.max_steps,
               "max_seconds": args.max_seconds, "confidence": args.confidence, "wall_seconds": round(wall, 1),
               "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
        report = build(finals, subjects, families, lambda e: board.get(e.episode_id), run, args.confidence)
    paths = write_files(report, Path(args.out))
    print()
    print(table(report))
    print(f"wall time: {wall:.1f} s ({len(finals) / max(wall, 1e-9) * 60:.1f} episodes/min)")
    print(f"report: {paths['json']}  {paths['csv']}  chart: {paths['png']}")
    bad = sum(r.unfinished for r in report.overall)
    return 0 if not bad and report.overall[0].rate >= args.min_success else 1


def main(args: argparse.Namespace) -> int:
    """``lodestar eval miniwob``: validate the options, then evaluate against ``--url`` or a stack of its own."""
    try:
        subjects = subjects_of(args)
        families = resolve_families(args.families)
    except ValueError as exc:
        print(f"lodestar eval miniwob: {exc}", file=sys.stderr)
        return 2
    if args.url:
        key = args.key or os.environ.get("LODESTAR_API_KEY") or os.environ.get("LODESTAR_API_KEYS", "").split(",")[0]
        return evaluate(args.url.rstrip("/"), key, args, subjects, families)

    from lodestar.stack import free_port, running_stack

    args.serve_port = args.serve_port or free_port()
    extra = {"LODESTAR_BROWSER_ALLOWED_HOSTS": f"{args.serve_host}:{args.serve_port}"}
    data_dir = Path(tempfile.mkdtemp(prefix="lodestar-eval-"))
    slots = args.concurrency or DEFAULT_SLOTS
    print(f"starting a local Lodestar ({slots} browser slots)...", flush=True)
    try:
        with running_stack(args.port or free_port(), slots, data_dir, extra_env=extra,
                           quiet=True) as (base_url, key):
            return evaluate(base_url, key, args, subjects, families)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
