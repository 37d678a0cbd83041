"""Persistent environments, the contract: what ``persistent`` and ``environment_id`` mean at submit (the help texts
of the start schema and the OpenAPI document) and the answers of GET /agent/environments[/{id}].

The records are kept by ``shared/store/environments.py``, the blobs in the artifact store (``shared/artifacts.py``);
the worker restores and saves them (``worker/environments.py``).
"""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields

PERSISTENT_HELP = (
    "Save the environment's state when the task completes (Lightcone: \"save environment state after task "
    "completes\"): a browser task's Playwright storage state (cookies, localStorage, IndexedDB, OPFS), a desktop "
    "task's home folder (files and program settings; running programs and open windows are not carried over). It is "
    "saved "
    "into environment_id, or into a new environment made at submit whose id the task's JSON shows. Only a "
    "completed task saves: a failed, cancelled or timed-out one leaves the environment as it was. A persistent "
    "task holds its environment from submit to its end: another persistent task naming it meanwhile is refused "
    "with 409 (environment_in_use); tasks that only restore it (environment_id without persistent) are never "
    "refused. save_session (the SDK's) means the same.")
ENVIRONMENT_ID_HELP = (
    "Start from a saved environment (Lightcone: \"restore a previous environment's state\"), on any worker of "
    "its kind: GET /agent/environments lists the tenant's. An unknown id (or another tenant's) is a 404 naming "
    "this field, one of the other kind a 422 (\"\" names none); without kind, the task takes the environment's; "
    "with persistent, the task saves back into it.")



class _Answer(Schema):
    class Meta:
        unknown = INCLUDE


class EnvironmentSchema(_Answer):
    """GET /agent/environments/{id}: a saved environment of the caller's tenant (times ISO 8601 UTC)."""

    environment_id = fields.Str(required=True)
    kind = fields.Str(required=True, metadata={"enum": ["browser", "desktop"]})
    created_at = fields.Str(required=True)
    updated_at = fields.Str(required=True, metadata={"description": "The last save, or the last persistent task that "
                                                                    "took it."})
    saved_at = fields.Str(allow_none=True, metadata={"description": "The last save; null before the first."})
    size_bytes = fields.Int(required=True, metadata={"description": "The saved state's size (0 before the first "
                                                                    "save)."})
    saves = fields.Int(metadata={"description": "How many tasks saved into it."})
    source_task_id = fields.Str(allow_none=True, metadata={"description": "The task that saved it last (or made "
                                                                          "it)."})
    in_use_by = fields.Str(allow_none=True, metadata={"description": "The active persistent task holding it, or "
                                                                     "null."})
    expires_at = fields.Str(allow_none=True, metadata={"description": (
        "When it is deleted unless a persistent task takes it first (LODESTAR_ENVIRONMENT_RETENTION seconds after "
        "its last save or take).")})


class EnvironmentListSchema(_Answer):
    """GET /agent/environments: the tenant's environments, last saved or taken first, a page at a time."""

    data = fields.List(fields.Nested(EnvironmentSchema), required=True)
    next_cursor = fields.Str(required=True, allow_none=True, metadata={"description": "The next page's cursor; "
                                                                                      "null on the last page."})
    has_more = fields.Bool(required=True)
