"""``GET /metrics``: the fleet's Prometheus figures (``api/metrics.py``), in the text exposition format.

It needs no API key (bind the API's metrics to the operators' network); with ``LODESTAR_METRICS_TOKEN`` set it
requires ``Authorization: Bearer <token>`` instead (401 otherwise). Redis unreachable: 503.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from api.errors import ApiError
from api.metrics import fleet_registry
from api.state import state

bp = Blueprint("metrics", __name__)
_REGISTRY = "lodestar_metrics_registry"


def token_ok(expected: str, authorization: str | None) -> bool:
    """Whether an ``Authorization`` header carries the metrics token (always True when none is configured)."""
    if not expected:
        return True
    given = (authorization or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), expected.encode())


@bp.get("/metrics")
def metrics() -> Response:
    """The fleet-wide figures (docs/operations.md, "Metrics").

    Raises:
        ApiError: 401 without the metrics token when ``LODESTAR_METRICS_TOKEN`` is set.
        redis.RedisError: Redis is unreachable (answered 503 by ``api/errors.py``).
    """
    st = state()
    if not token_ok(st.settings.metrics_token, request.headers.get("Authorization")):
        raise ApiError(401, "unauthorized", "GET /metrics needs the metrics token (LODESTAR_METRICS_TOKEN)",
                       headers={"WWW-Authenticate": "Bearer"})
    registry = current_app.extensions.get(_REGISTRY)
    if not isinstance(registry, CollectorRegistry):
        registry = current_app.extensions[_REGISTRY] = fleet_registry(st.store)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})
