"""``lodestar export --batch ID out.zip``: a batch's trajectories as one archive (JSONL + images), through the API.

An HTTP client like ``lodestar tasks`` (``--url``, ``--key``): it lists the batch's tasks (``GET /agent/tasks?
batch_id=``), reads each one's trajectory (``GET /agent/tasks/{id}/trajectory``) and screenshots, and writes the
layout of ``docs/trajectories.md``: ``tasks.jsonl`` and ``steps.jsonl`` at the top, and one folder per task shaped
like OSWorld's result folders (``traj.jsonl``, ``step_<n>.jpg``, ``result.txt``) with the full record
(``trajectory.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from typing import Any

import requests

LAYOUT = "lodestar.export/1"
"""The archive layout's name and version (in ``tasks.jsonl``'s records; ``docs/trajectories.md``)."""


class ExportError(Exception):
    """The API refused a call; ``str()`` says which and why."""


def _get(session: requests.Session, url: str, **params: Any) -> requests.Response:
    resp = session.get(url, params=params or None, timeout=120)
    if not resp.ok:
        raise ExportError(f"GET {url}: HTTP {resp.status_code}: {resp.text[:300]}")
    return resp


def batch_task_ids(session: requests.Session, base: str, batch_id: str) -> list[str]:
    """The ids of the batch's tasks (every page of the list), oldest first."""
    ids: list[str] = []
    cursor = None
    while True:
        params = {"batch_id": batch_id, "limit": 200, **({"cursor": cursor} if cursor else {})}
        page = _get(session, f"{base}/agent/tasks", **params).json()
        ids += [t["task_id"] for t in page["data"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return ids[::-1]


def osworld_lines(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The task's steps as OSWorld ``traj.jsonl`` lines (``step_num``, ``action_timestamp``, ``action``,
    ``response``, ``reward``, ``done``, ``info``, ``screenshot_file``). ``reward`` is 1.0 on the last step of a
    completed task, else 0; ``info`` holds what OSWorld has no field for (URL, results, elements, timings, usage)."""
    steps = record["steps"]
    completed = record["task"].get("exit_code") == 0
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        yield {
            "step_num": step["step"], "action_timestamp": step.get("ts"),
            "action": step.get("native_action") or step["actions"], "response": step.get("thought"),
            "reward": 1.0 if last and completed else 0.0, "done": last and record["task"].get("exit_code") is not None,
            "info": {k: step.get(k) for k in ("url", "actions", "results", "elements", "timings", "usage")},
            "screenshot_file": step["screenshot"]["file"],
        }


def export_task(session: requests.Session, base: str, task_id: str, archive: zipfile.ZipFile) -> dict[str, Any]:
    """Write one task's folder into ``archive``; returns its ``tasks.jsonl`` record."""
    record = _get(session, f"{base}/agent/tasks/{task_id}/trajectory").json()
    folder = task_id
    for step in record["steps"]:
        shot = step["screenshot"]
        name = f"step_{step['step']}.jpg"
        resp = session.get(shot["url"], timeout=120)
        if resp.ok:
            archive.writestr(f"{folder}/{name}", resp.content)
            shot["file"] = name
        else:  # expired, or never stored: the record says so
            shot["file"] = None
        shot.pop("url", None)  # a signed URL expires: the archive holds the file
    task = record["task"]
    task.pop("last_screenshot_url", None)
    archive.writestr(f"{folder}/trajectory.json", json.dumps(record, indent=1))
    archive.writestr(f"{folder}/traj.jsonl", "".join(json.dumps(line) + "\n" for line in osworld_lines(record)))
    archive.writestr(f"{folder}/result.txt", f"{1.0 if task.get('exit_code') == 0 else 0.0}\n")
    return {"layout": LAYOUT, "task_id": task_id, "folder": folder, "instruction": task.get("instruction"),
            "status": task.get("status"), "exit_code": task.get("exit_code"), "result": task.get("result"),
            "error": task.get("error"), "steps": len(record["steps"]), "task": task}


def step_rows(task_id: str, instruction: str | None, record_steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One ``steps.jsonl`` row per step: what the agent saw (instruction, URL, screenshot file, ARIA snapshot) and
    did (native and normalized actions), ready for fine-tuning."""
    for step in record_steps:
        file = step["screenshot"].get("file")
        yield {"task_id": task_id, "step": step["step"], "instruction": instruction, "url": step.get("url"),
               "screenshot": f"{task_id}/{file}" if file else None, "aria": step.get("aria"),
               "native_action": step.get("native_action"), "actions": step["actions"],
               "results": step["results"], "elements": step.get("elements") or [], "thought": step.get("thought"),
               "timings": step.get("timings"), "usage": step.get("usage")}


def export(args: argparse.Namespace) -> int:
    """``lodestar export --batch ID OUT.zip``; exits 0 when every task was written, 1 otherwise."""
    base = args.url.rstrip("/")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {args.key}"
    try:
        ids = batch_task_ids(session, base, args.batch)
        if not ids:
            print(f"lodestar export: batch {args.batch} has no tasks (or it expired)", file=sys.stderr)
            return 1
        tmp = f"{args.out}.part"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            tasks, steps = [], []
            for task_id in ids:
                row = export_task(session, base, task_id, archive)
                tasks.append(row)
                record = json.loads(archive.read(f"{task_id}/trajectory.json"))
                steps += list(step_rows(task_id, row["instruction"], record["steps"]))
            archive.writestr("tasks.jsonl", "".join(json.dumps(t) + "\n" for t in tasks))
            archive.writestr("steps.jsonl", "".join(json.dumps(s) + "\n" for s in steps))
        os.replace(tmp, args.out)
    except (ExportError, requests.RequestException, OSError) as exc:
        print(f"lodestar export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(tasks)} tasks, {len(steps)} steps")
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", required=True, metavar="ID", help="the batch_id of POST /agent/tasks/batch")
    p.add_argument("out", help="the archive to write (.zip)")
    p.add_argument("--url", default=os.environ.get("LODESTAR_URL", "http://127.0.0.1:8000"))
    p.add_argument("--key", default=os.environ.get("LODESTAR_API_KEY", ""))
