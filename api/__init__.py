"""The Lodestar HTTP API: a Flask app factory serving the Lightcone-compatible Agent Tasks API.

``create_app()`` reads settings from ``LODESTAR_*`` variables; tests pass ``test_config`` (a ``Settings``) instead.
Serve it with gunicorn's gevent workers (``lodestar api``): each request and SSE/WebSocket stream is a greenlet,
and one reader per process fans task events out to the streams (``api/fanout.py``).
"""

from __future__ import annotations

import gc
from typing import Any

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from shared.queue import RunTaskMessages, make_celery
from shared.schemas import make_start_schema
from shared.settings import Settings, load_settings
from shared.store import TaskStore


def create_app(test_config: Settings | None = None) -> Flask:
    """Build the API app. ``test_config`` replaces the environment's settings (tests, embedding)."""
    from api import openapi
    from api.fanout import EndWatcher, EventHub
    from api.routes import ApiError, authenticate, bp, sock
    from shared.tenants import RateLimiter, Tenants, check_rate_limit

    settings = test_config or load_settings()
    try:
        check_rate_limit(settings.default_rate_limit)
    except ValueError as exc:
        raise ValueError(f"LODESTAR_DEFAULT_RATE_LIMIT: {exc}") from None
    _raise_open_file_limit()
    app = Flask(__name__)
    app.config["LODESTAR"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = TaskStore.from_settings(settings)
    app.extensions["lodestar.store"] = store
    app.extensions["lodestar.celery"] = celery = make_celery(settings)
    app.extensions["lodestar.messages"] = RunTaskMessages(celery)
    app.extensions["lodestar.start_schema"] = make_start_schema(settings)

    tenants = Tenants(store)
    app.extensions["lodestar.tenants"] = tenants
    app.extensions["lodestar.waits"] = EndWatcher(store.redis, f"{store.prefix}:ended")
    app.extensions["lodestar.events"] = EventHub(store)

    app.extensions["lodestar.ratelimits"] = RateLimiter(settings.redis_url, f"{settings.key_prefix}:ratelimit")
    app.before_request(authenticate)  # and the tenant's rate limit

    app.register_blueprint(bp)
    sock.init_app(app)

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            store.redis.ping()
        except redis.RedisError as exc:
            return jsonify({"status": "unavailable", "redis": str(exc)}), 503
        return jsonify({"status": "ok", "redis": "ok"}), 200

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi.build_spec(settings))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        body: dict[str, Any] = {"type": (exc.name or "error").lower().replace(" ", "_"), "message": exc.description}
        resp = jsonify({"error": body})
        resp.status_code = exc.code or 500
        if exc.code == 429:
            resp.headers["x-should-retry"] = "true"
        return resp

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:  # raised by authenticate(), outside the blueprint's handlers
        return exc.response()

    # Everything built so far (modules, the app, schemas, the Celery app) lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise stop every stream of a gevent process for ~90 ms
    # (measured with 1000 open streams; ~30 ms after this)
    gc.collect()
    gc.freeze()
    return app


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard limit: every open event stream holds a client socket and a
    Redis connection, and the usual soft limit (1024) would cap an API process near 500 streams."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
