"""A task's trajectory: its episode as one portable JSON record, built from what the store already holds.

Each step is recorded once, by the worker, as the task's ``step`` event (``worker/runner.py``: the normalized
actions, the model's native action, the results, the URL, the elements clicked, observe / decide / act timings, the
model usage) plus its screenshot and, where the policy asked for one, its ARIA snapshot in the artifact store
(``screenshots/<n>.jpg``, ``aria/<n>.yaml.gz``). Nothing else is stored for trajectories: :func:`trajectory` reads the
events and artifacts back. Served by ``GET /agent/tasks/{id}/trajectory``; replays (``replay_of``) read the steps
with :func:`step_events`. The format is described in ``docs/trajectories.md``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.artifacts import aria_name
from shared.task import Task

if TYPE_CHECKING:
    from shared.store import TaskStore

FORMAT = "lodestar.trajectory/1"
"""The ``format`` of a trajectory record (changes when a field changes meaning)."""

_NULLABLE_OBJECT = {"type": ["object", "null"]}
STEP_SCHEMA: dict[str, Any] = {"type": "object", "required": ["step", "url", "screenshot", "actions", "results"],
                               "properties": {
    "step": {"type": "integer"}, "attempt": {"type": ["integer", "null"]}, "ts": {"type": ["number", "null"]},
    "url": {"type": ["string", "null"]},
    "screenshot": {"type": "object", "required": ["step", "url"], "properties": {
        "step": {"type": "integer"}, "url": {"type": "string"}}},
    "aria": {"type": ["string", "null"], "description": "The ARIA snapshot the policy read (Playwright's YAML)"},
    "native_action": {"description": "The model's own action(s) (tool calls or action text); null for offline "
                                     "agents"},
    "actions": {"type": "array", "items": {"type": "object"}, "description": "Normalized actions (Action JSON)"},
    "results": {"type": "array", "items": {"type": "object"}},
    "elements": {"type": "array", "items": _NULLABLE_OBJECT, "description": "What each click hit: {role, name}"},
    "thought": {"type": ["string", "null"]}, "messages": {"type": "array", "items": {"type": "string"}},
    "timings": {"type": "object", "description": "observe_ms, decide_ms, act_ms"}, "usage": _NULLABLE_OBJECT,
    "human": {"type": "boolean", "description": "A user's action in a takeover (the console), not the agent's; "
                                                 "its screenshot was taken after it"}}}
"""JSON Schema of one step of a trajectory (the OpenAPI document's ``Trajectory.steps`` items)."""

def step_events(store: TaskStore, task_id: str) -> list[dict[str, Any]]:
    """The task's ``step`` events, by step number (a step recorded twice, by two attempts, counts once: the
    later record), oldest first."""
    steps: dict[int, dict[str, Any]] = {}
    after = 0
    while True:
        events = store.read_events(task_id, after=after, count=1000)
        if not events:
            break
        for _seq, event in events:
            if event.get("type") == "step":
                steps[int(event["step"])] = event
        after = events[-1][0]
    return [steps[n] for n in sorted(steps)]


def task_part(task: Task, screenshot_url: Callable[[Task, int], str]) -> dict[str, Any]:
    """The ``task`` of a trajectory: the task's public JSON (its outcome: status, exit code, result, error, usage,
    cost) plus the parameters that shaped the episode (start URL, viewport, replay source...)."""
    return {
        **task.to_json(screenshot_url),
        "start_url": task.start_url, "viewport_width": task.viewport_width, "viewport_height": task.viewport_height,
        "temperature": task.temperature, "max_duration_seconds": task.max_duration_seconds,
        "system_prompt": task.system_prompt, "batch_id": task.batch_id, "replay_of": task.replay_of,
    }


def trajectory(store: TaskStore, task: Task, screenshot_url: Callable[[Task, int], str]) -> dict[str, Any]:
    """The task's trajectory record ``{"format", "task", "steps"}`` (see ``docs/trajectories.md``); each step's
    screenshot is a reference (``{"step", "url"}``: ``screenshot_url(task, step)``), its ARIA snapshot inline."""
    steps = []
    for event in step_events(store, task.task_id):
        n = int(event["step"])
        aria = store.artifacts.get(task.task_id, aria_name(n)) if event.get("aria") else None
        steps.append({
            "step": n, "attempt": event.get("attempt"), "ts": event.get("ts"), "url": event.get("url"),
            "screenshot": {"step": n, "url": screenshot_url(task, n)},
            "aria": gzip.decompress(aria.data).decode("utf-8", "replace") if aria else None,
            "native_action": event.get("native"),
            "actions": event.get("actions") or [],
            "results": event.get("results") or [],
            "elements": event.get("elements") or [],
            "thought": event.get("thought"),
            "messages": event.get("messages") or [],
            "timings": event.get("timings") or {},
            "usage": event.get("usage"),
            "human": bool(event.get("human")),  # a user's action in a takeover (its screenshot: after it)
        })
    return {"format": FORMAT, "task": task_part(task, screenshot_url), "steps": steps}
