"""The Lodestar HTTP API: a Flask app factory serving the Lightcone-compatible Agent Tasks API.

``create_app()`` reads settings from ``LODESTAR_*`` variables; tests pass ``test_config`` (a ``Settings``) instead.
Serve it with gunicorn's gthread workers (``lodestar api``): each SSE/WebSocket stream holds one thread.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, Response, jsonify
from flask_sock import Sock
from werkzeug.exceptions import HTTPException

from shared.queue import make_celery
from shared.schemas import make_start_schema
from shared.settings import Settings, load_settings
from shared.store import TaskStore


def create_app(test_config: Settings | None = None) -> Flask:
    """Build the API app. ``test_config`` replaces the environment's settings (tests, embedding)."""
    from api import openapi
    from api.routes import bp, register_websocket

    settings = test_config or load_settings()
    app = Flask(__name__)
    app.config["LODESTAR"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = TaskStore.from_settings(settings)
    app.extensions["lodestar.store"] = store
    app.extensions["lodestar.celery"] = make_celery(settings)
    app.extensions["lodestar.start_schema"] = make_start_schema(settings)

    sock = Sock()
    register_websocket(sock)
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
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        body: dict[str, Any] = {"type": (exc.name or "error").lower().replace(" ", "_"), "message": exc.description}
        return jsonify({"error": body}), exc.code or 500

    return app
