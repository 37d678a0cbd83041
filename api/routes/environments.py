"""The caller's saved environments (``persistent`` tasks; ``shared/store/environments.py``): list, read, delete.

Another tenant's environment is a 404, as a missing one; deleting one that a running persistent task holds is a 409.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, g, jsonify, request

from api.auth import authenticate
from api.errors import ApiError, invalid_field, not_found
from api.state import state
from shared.store.environments import Environment
from shared.store.listing import decode_cursor, encode_cursor
from shared.task import KINDS

bp = Blueprint("environments", __name__)
bp.before_request(authenticate)


def _load(env_id: str) -> Environment:
    env = state().store.environments.get(g.tenant, env_id)
    if env is None:
        raise not_found(f"environment {env_id}")
    return env


@bp.get("/agent/environments")
def list_environments() -> Response:
    """The tenant's environments, last saved or taken first: ``?kind=browser|desktop``, ``?limit=1..list_max_limit``,
    ``?cursor=`` (a page's ``next_cursor``)."""
    kind = request.args.get("kind")
    if kind is not None and kind not in KINDS:
        raise invalid_field("kind", f"kind must be one of {', '.join(KINDS)}", f"Must be one of: {', '.join(KINDS)}.")
    limit_raw = request.args.get("limit", "50")
    max_limit = state().settings.list_max_limit
    if not re.fullmatch(r"[0-9]{1,9}", limit_raw) or not 1 <= int(limit_raw) <= max_limit:
        raise invalid_field("limit", f"limit must be an integer from 1 to {max_limit}",
                            f"Must be between 1 and {max_limit}.")
    cursor = request.args.get("cursor") or None
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError:
        raise invalid_field("cursor", "malformed cursor", "Not a valid cursor.") from None
    environments = state().store.environments
    found, more = environments.of_tenant(g.tenant, kind, int(limit_raw), after)
    data = [env.to_json(holder) for env, holder in zip(found, environments.holders(found), strict=True)]
    last = found[-1] if found and more else None
    return jsonify({"data": data, "next_cursor": encode_cursor((last.updated_at, last.environment_id)) if last
                    else None, "has_more": more})


@bp.get("/agent/environments/<env_id>")
def get_environment(env_id: str) -> Response:
    """One environment of the tenant."""
    env = _load(env_id)
    return jsonify(env.to_json(state().store.environments.holders([env])[0]))


@bp.delete("/agent/environments/<env_id>")
def delete_environment(env_id: str) -> Response:
    """Delete the environment and its saved state now (409 while a persistent task holds it)."""
    done = state().store.environments.delete(g.tenant, env_id)
    if done.outcome == "missing":
        raise not_found(f"environment {env_id}")
    if done.outcome == "busy":
        raise ApiError(409, "environment_in_use", f"environment {env_id} is in use by task {done.detail}; cancel it "
                       "or wait for its end", headers={"x-should-retry": "false"})
    return jsonify({"environment_id": env_id, "deleted": True})
