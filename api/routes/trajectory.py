"""A task's trajectory: ``GET /agent/tasks/{id}/trajectory``, the episode as one portable JSON record (the task's
parameters and outcome, then each step: screenshot reference, ARIA snapshot, native and normalized actions, results,
URL, elements clicked, timings, usage). Built by ``shared/trajectory.py``; the format is ``docs/trajectories.md``."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import authenticate, load_task, urls
from api.state import state
from shared.trajectory import trajectory

bp = Blueprint("trajectory", __name__)
bp.before_request(authenticate)


@bp.get("/agent/tasks/<task_id>/trajectory")
def task_trajectory(task_id: str) -> Response:
    """The task's trajectory so far (complete once it ended); screenshots as signed URLs that load without the
    bearer key until they expire."""
    return jsonify(trajectory(state().store, load_task(task_id), urls()))
