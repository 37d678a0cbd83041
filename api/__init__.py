"""The Lodestar HTTP API: a Flask app factory serving the Lightcone-compatible Agent Tasks API.

``create_app()`` reads settings from ``LODESTAR_*`` variables; tests pass ``test_config`` (a ``Settings``) instead.
Serve it with gunicorn's gevent workers (``lodestar api``): each request and SSE/WebSocket stream is a greenlet,
and one reader per process fans task events out to the streams (``api/fanout.py``).
"""

from __future__ import annotations

import gc

import redis
from flask import Flask, Response, jsonify, request

from api import bodies, errors, openapi
from api.fanout import EndWatcher, EventHub
from api.routes import BLUEPRINTS, sock
from api.routes.tasks import TaskIdConverter
from api.state import EXTENSION, AppState
from shared import logs, signing
from shared.queue import Dispatcher, make_celery
from shared.schemas import make_cancel_schema, make_message_schema, make_start_schema
from shared.secrets import SecretsError, check_key
from shared.settings import Settings, load_settings
from shared.store import TaskStore
from shared.tenants import RateLimiter, check_rate_limit


def create_app(test_config: Settings | None = None) -> Flask:
    """Build the API app. ``test_config`` replaces the environment's settings (tests, embedding).

    Raises:
        ValueError: a setting is unusable (a malformed default rate limit or model registry, a URL signing key
            shorter than 32 characters, a log format other than text or json, garbage-collector thresholds that
            are not three integers).
    """
    settings = test_config or load_settings()
    try:
        check_rate_limit(settings.default_rate_limit)
    except ValueError as exc:
        raise ValueError(f"LODESTAR_DEFAULT_RATE_LIMIT: {exc}") from None
    try:
        check_key(settings.secrets_key)
    except SecretsError as exc:
        raise ValueError(str(exc)) from None
    signing.check_settings(settings)
    gc_thresholds = parse_gc_thresholds(settings.api_gc_thresholds)
    logs.configure(settings.log_format, ("gunicorn.error",))
    _raise_open_file_limit()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = TaskStore.from_settings(settings)
    app.extensions[EXTENSION] = AppState(
        settings=settings, store=store, dispatcher=Dispatcher(make_celery(settings), store),
        start_schema=make_start_schema(settings), message_schema=make_message_schema(settings),
        cancel_schema=make_cancel_schema(settings),
        waits=EndWatcher(store), events=EventHub(store),
        rate_limits=RateLimiter(settings.redis_url, store.keys.ratelimit),
        signer=signing.UrlSigner.from_settings(settings, store))
    errors.register(app)
    bodies.install(app, settings)
    app.url_map.converters["task"] = TaskIdConverter
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    sock.init_app(app)

    @app.before_request
    def _log_context() -> None:  # every line of the request names its task (the tenant: api/auth.py)
        logs.clear()
        args = request.view_args or {}
        task_id = args.get("task_id") or args.get("id")
        if isinstance(task_id, str):
            logs.bind(task_id=task_id)

    @app.teardown_request
    def _log_context_end(_: BaseException | None) -> None:
        logs.clear()

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            store.ping()
        except redis.RedisError as exc:
            return jsonify({"status": "unavailable", "redis": str(exc)}), 503
        return jsonify({"status": "ok", "redis": "ok"}), 200

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi.build_spec(settings))

    # Everything built so far (modules, the app, schemas, the Celery app) lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise stop every stream of a gevent process for ~90 ms
    # (measured with 1000 open streams; ~30 ms after this)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gc_thresholds)
    return app


def parse_gc_thresholds(value: str) -> tuple[int, int, int]:
    """``LODESTAR_API_GC_THRESHOLDS`` (``"10000,20,100"``) as ``gc.set_threshold``'s three arguments.

    Raises:
        ValueError: not three integers from 1 to 2**31 - 1 (a 0 for generation 0 would turn the collector off;
            the collector's counters are C ints); the message names the variable.
    """
    parts = [part.strip() for part in value.split(",")]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 3 or not all(1 <= n <= 2**31 - 1 for n in numbers):
        raise ValueError(f"LODESTAR_API_GC_THRESHOLDS: expected three integers from 1 to 2147483647 (generation "
                         f"0, 1, 2 of gc.set_threshold, e.g. 10000,20,100), got {value!r}")
    return numbers[0], numbers[1], numbers[2]


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard limit: every open event stream holds a client socket and a
    Redis connection, and the usual soft limit (1024) would cap an API process near 500 streams."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
