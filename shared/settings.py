"""Every tunable of Lodestar, read from ``LODESTAR_*`` environment variables in one place.

Units: seconds unless the name ends in ``_ms``; sizes in pixels or characters as named.
Both the API and the worker call :func:`load_settings`; tests pass overrides.

Example::

    LODESTAR_REDIS_URL=redis://10.0.0.5:6379/0 LODESTAR_API_KEYS=key1,key2 lodestar api
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shared import task

ENV_PREFIX = "LODESTAR_"


def _default_chromium() -> str:
    """Debian's Chromium when present, else "" (Playwright's own browser)."""
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if shutil.which(candidate):
            return candidate
    return ""


@dataclass(frozen=True)
class Settings:
    """Lodestar configuration. Each field maps to ``LODESTAR_<FIELD NAME IN CAPITALS>``.

    Lists are comma-separated in the environment; booleans accept 1/0, true/false, yes/no.
    """

    # --- Redis and queues -------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis used for the Celery broker, task records, control channels and event logs."""
    redis_max_connections: int = 2048
    """Redis connections one process may open (a blocking pool: past it, callers wait). Event streams share one
    reader per API process (``api/fanout.py``), so this bounds concurrent requests, not open streams."""
    key_prefix: str = "lodestar"
    """Prefix of every Redis key Lodestar writes, so several deployments can share a server."""
    broker_url: str = ""
    """Celery broker: empty means ``redis_url`` (the default: Redis is broker and store), or an ``amqp://`` URL to
    run the queues on RabbitMQ (priorities through ``x-max-priority``; Redis stays the store for state, events and
    control). See docs/reliability.md for when to choose which."""
    visibility_timeout: int = 3600
    """Seconds before the Redis transport delivers an unacknowledged Celery message again. Correctness does not
    depend on it: a message delivered again for a task another worker holds is dropped, and a dead worker's
    task is found by the reaper through its lease (``lease_ttl``), not through its message."""
    lease_ttl: int = 15
    """Seconds a worker's claim on a task lives without a heartbeat (renewed every lease_ttl/3). A killed worker's
    task is requeued by the reaper about this long after its last heartbeat."""
    reaper_interval: float = 5.0
    """Seconds between two rounds of the reaper (run by one worker of the fleet at a time, under a Redis lock):
    requeue tasks whose lease expired, send run messages and webhook deliveries that are due, start deferred
    tasks that now fit their tenant's running limit."""
    max_attempts: int = 3
    """How many times a task may be started (its first run included) before a lost worker fails it with exit
    code 6. A task handed back by a worker that shuts down does not use up an attempt."""
    shutdown_grace: float = 30.0
    """Seconds a running task may go on after its worker is asked to stop (SIGTERM to the worker or to its whole
    process group) before it is handed back to the queue; paused tasks are handed back at once. Keep systemd's
    ``TimeoutStopSec`` and Kubernetes' ``terminationGracePeriodSeconds`` above it."""
    pause_timeout: float = 0.0
    """Seconds a task may stay paused on its worker before the worker lets it go (0: never). See
    ``pause_timeout_action``."""
    pause_timeout_action: str = "release"
    """What ``pause_timeout`` does: "release" frees the worker's slot and closes the environment, and the task
    stays ``paused`` (a resume queues it again, to restart in a fresh environment on any worker); "end" cancels
    the task (exit code 4)."""
    environment_retries: int = 0
    """Times a task whose browser or desktop crashed under it is started again (a fresh environment, a new
    attempt) before it fails with exit code 5."""
    redis_retry_seconds: float = 10.0
    """Seconds a worker keeps retrying a Redis command through a connection error (a Redis restart) before it
    gives the task up to the reaper. The API does not retry (it answers 503 at once)."""

    # --- API ---------------------------------------------------------------------------
    api_keys: tuple[str, ...] = ()
    """Bearer keys accepted by the API. Empty: every request gets 401 (no open mode)."""
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 1
    """gunicorn processes of ``lodestar api`` (``--workers`` wins); about one per core for a dedicated machine."""
    api_worker_class: str = "gevent"
    """gunicorn worker class of ``lodestar api``: ``gevent`` (default: each request and each open SSE/WebSocket
    stream is a greenlet, so one process holds thousands of streams) or ``gthread`` (a thread each; past a few
    hundred streams the threads' contention for the GIL costs more than the work, see docs/performance.md)."""
    api_connections: int = 2000
    """Open connections per API process (gunicorn ``--worker-connections``); each SSE/WebSocket stream holds one."""
    api_threads: int = 64
    """Threads per API process when ``api_worker_class`` is ``gthread``; each open stream holds one."""
    public_base_url: str = ""
    """Base URL clients use to reach the API (for absolute screenshot URLs). Empty: taken from each request."""
    sse_keepalive: float = 15.0
    """Seconds between SSE comment lines on an idle stream (keeps proxies from closing it)."""
    api_gc_thresholds: str = "10000,20,100"
    """The API processes' garbage-collector thresholds (``gc.set_threshold``: generation 0, 1, 2), as three
    comma-separated integers. A full collection walks every object of every open stream and stops all streams of
    the process meanwhile (~50-90 ms with 1000 streams); Python's defaults (700,10,10) ran one within a second of a
    burst of events, these about 30x less often (docs/performance.md, the events rows). ``700,10,10``: Python's."""
    sse_direct_writes: bool = True
    """Under gunicorn's gevent worker, let the process's event hub write each event to the sockets of the streams
    that are caught up itself, instead of waking every stream's greenlet to write it (``api/sockets.py``: about a
    third less CPU per event and stream). Off: every frame goes through the WSGI response."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body the API reads, in bytes (16 MiB: a batch of 10 000 tasks of ~1.5 KB each). A larger
    ``Content-Length`` is answered 413 before the body is read; a chunked body is cut off at this size with 413."""
    max_json_depth: int = 32
    """Deepest nesting of arrays and objects a JSON request body may have (levels; 422 past it). Checked before
    the body is parsed, so no depth reaches the parser's recursion limit."""
    url_signing_key: str = ""
    """Secret that signs screenshot URLs (``shared/signing.py``; HMAC-SHA256), so an ``<img>`` can load them
    without the bearer key. Empty: a random key is generated once and kept in Redis (``P:url_signing_key``),
    shared by every API replica and worker and kept across restarts; set one to choose it (at least 32
    characters) or to rotate it (URLs signed with the old one stop working)."""
    url_ttl: int = 3600
    """Seconds a signed screenshot URL stays valid (at least; the expiry is rounded up to the next minute so that
    the URL of a screenshot is stable for a while and browsers can cache it)."""
    share_ttl: int = 86400
    """Seconds a console share link (POST /agent/tasks/{id}/share) stays valid when the request gives no
    ``expires_in``."""
    share_max_ttl: int = 30 * 86400
    """Longest ``expires_in`` a share link may ask for, in seconds."""
    takeover_timeout: float = 30.0
    """Seconds POST /agent/tasks/{id}/actions waits for the paused task's worker to perform a human action and
    answer before it answers 504 (the action is then withdrawn if the worker has not taken it)."""

    # --- Task limits and defaults (the documented Lightcone defaults) -----------------
    default_model: str = task.DEFAULT_MODEL
    kinds: tuple[str, ...] = ("browser",)
    """Kinds of environment this deployment has workers for; a task of another kind is refused with 422
    instead of waiting forever on a queue nobody serves."""
    default_kind: str = "browser"
    """Kind used when a start request gives neither ``kind`` nor ``start_url``."""
    default_max_steps: int = task.DEFAULT_MAX_STEPS
    max_steps_limit: int = 1000
    default_max_duration: int = task.DEFAULT_MAX_DURATION
    """Seconds of wall-clock time a task may run when the request does not say."""
    max_duration_limit: int = 7000
    """Longest ``max_duration_seconds`` a task may ask for. With RabbitMQ, keep its ``consumer_timeout`` above it
    (a worker holds a task's message until the task ends)."""
    max_instruction_chars: int = 20_000
    max_system_prompt_chars: int = 20_000
    max_context_turns: int = 100
    max_message_chars: int = 10_000
    max_metadata_keys: int = 50
    max_output_schema_chars: int = 20_000
    """Longest ``output_schema`` a start request may give, as compact JSON text."""
    output_schema_retries: int = 1
    """Times a model whose final answer does not match the task's ``output_schema`` is told the validation errors
    and asked again before the task fails (exit code 1). Offline agents get none: nobody could answer again."""
    viewport_min_width: int = 320
    viewport_max_width: int = 3840
    viewport_min_height: int = 240
    viewport_max_height: int = 2160

    # --- Tenants, limits, batches, webhooks --------------------------------------------------
    default_max_queued: int = 0
    """Most queued tasks per tenant (0: no limit); past it, submits get 429. A tenant's own setting wins."""
    default_max_running: int = 0
    """Most running or paused tasks per tenant (0: no limit), enforced by the workers; the rest wait queued."""
    default_rate_limit: str = ""
    """Requests a tenant may make to the API, in the `limits` notation ("20/second;1000/minute"); empty: none."""
    default_daily_budget_usd: float = 0.0
    """USD a tenant's model calls may cost per UTC day (0: no budget); once spent, submits get 429 and running
    tasks fail before their next call (exit code 8). A tenant's own setting (``lodestar keys limits
    --daily-budget``) wins."""
    idempotency_window: int = 24 * 3600
    """Seconds an ``idempotency_key`` returns the task it first created."""
    batch_max_items: int = 10_000
    """Most tasks in one POST /agent/tasks/batch."""
    wait_max_timeout: float = 300.0
    """Longest ``timeout`` a GET /agent/tasks/{id}/wait may hold the request, in seconds."""
    list_max_limit: int = 500
    """Largest page of GET /agent/tasks."""
    webhook_max_attempts: int = 8
    """Deliveries tried per webhook event before giving up (backoff 2, 4, 8 ... seconds, capped at 10 minutes)."""
    webhook_timeout: float = 10.0
    """Seconds a webhook receiver has to answer one delivery."""
    webhook_allowed_hosts: tuple[str, ...] = ()
    """Private hosts (or host:port) webhooks may be sent to; others on private addresses are refused."""

    secrets_key: str = ""
    """Fernet key (32 random bytes, URL-safe base64) that seals task ``secrets`` (``shared/secrets.py``); the API and
    every worker need the same one. Empty: tasks with ``secrets`` are refused (422). ``lodestar up`` makes one."""

    # --- Retention ---------------------------------------------------------------------
    task_retention: int = 7 * 24 * 3600
    """Seconds an ended task's record, events and screenshots are kept."""
    screenshot_ttl: int = 24 * 3600
    """Seconds a screenshot is kept while its task is still running (refreshed at the end)."""
    environment_retention: int = 0
    """Seconds a saved environment (``persistent`` tasks; GET /agent/environments) is kept after its last save or
    use; 0: ``task_retention``. Its blob goes with it (Redis: the same TTL; S3: the artifacts' lifecycle rule, which
    ``lodestar artifacts lifecycle`` makes long enough for this too)."""
    environment_max_bytes: int = 64 * 1024 * 1024
    """The largest saved environment state, in bytes (a browser's storage state JSON, a desktop home's tar.gz): a
    larger one is not saved (the task still completes; its ``error`` says why)."""
    event_stream_maxlen: int = 10_000
    """Most events kept per task (older ones are trimmed)."""

    # --- Artifacts (step screenshots; shared/artifacts.py) -------------------------------
    artifacts_url: str = ""
    """Where tasks' artifacts (step screenshots) are kept: empty for Redis (one machine: they take Redis memory for
    the task's retention), or ``s3://bucket/prefix`` for any S3-compatible store, reached with boto3's own settings
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for MinIO, Ceph
    or moto). The bucket must exist; give it the lifecycle rule of ``lodestar artifacts lifecycle`` (retention).
    The API and every worker must see the same value."""
    artifacts_redirect: bool = False
    """With an S3 store: answer GET /agent/tasks/{id}/screenshots/{step} with a 302 to a presigned URL of the object
    instead of sending its bytes through the API (only when clients can reach the S3 endpoint)."""
    artifacts_redirect_ttl: int = 300
    """Seconds a presigned URL of ``artifacts_redirect`` stays valid."""
    artifacts_timeout: float = 10.0
    """Seconds an S3 request may take to connect, and to read each answer (boto3 retries twice more)."""
    artifacts_max_connections: int = 50
    """HTTP connections to S3 one process keeps (concurrent artifact reads and writes)."""

    # --- Worker and browser -------------------------------------------------------------
    chromium_path: str = dataclasses.field(default_factory=_default_chromium)
    """Chromium executable; empty means Playwright's own downloaded browser."""
    headless: bool = True
    screenshot_quality: int = 80
    """JPEG quality (1-100) of step screenshots."""
    action_timeout: float = 5.0
    """Seconds a single browser action (locating an element, navigating) may take."""
    allow_private_networks: bool = False
    """Let agents' browsers reach loopback, private, link-local and reserved addresses."""
    browser_allowed_hosts: tuple[str, ...] = ()
    """Hosts (or host:port) an agent's browser may reach even though they are private, e.g. 127.0.0.1:8765. An
    entry matches the name a URL gives or the address the egress proxy resolved it to."""
    egress_hosts: tuple[str, ...] = ()
    """Names the egress proxy resolves itself before asking DNS, as ``name=address`` entries (like /etc/hosts lines,
    e.g. ``intranet.test=10.0.0.5``); the address is checked like any other."""
    egress_idle_timeout: float = 300.0
    """Seconds a connection through the egress proxy (a kept-alive request, a tunnel, a WebSocket) may stay silent
    before the proxy closes it."""
    max_allowed_domains: int = 100
    """Most patterns in a task's (or a tenant's) ``allowed_domains``."""
    worker_concurrency: int = 1
    """Browser slots per worker machine (one Chromium per slot)."""

    # --- Desktop (kind "desktop": one Xvfb display per worker process, driven by pyautogui) ---
    xvfb_path: str = "Xvfb"
    """Xvfb executable (a name on PATH or a path). ``lodestar up`` starts a desktop worker only when it exists."""
    desktop_window_manager: str = "openbox"
    """Window manager command, started once per display so new windows get the keyboard focus (split like a shell
    command line). Empty: none (focus then follows the pointer)."""
    desktop_startup: str = "xterm"
    """Program started in every fresh desktop session, with the keyboard focus (split like a shell command line).
    Empty: the session starts with an empty screen."""
    desktop_display_min: int = 100
    """Lowest X display number a desktop worker process tries (``:100``); each process takes the first free one."""
    desktop_display_max: int = 199
    """Highest X display number tried; with none free the task fails with exit code 5."""
    desktop_start_timeout: float = 15.0
    """Seconds Xvfb, the window manager, the start-up program's first window and a desktop Chromium's window may
    each take to appear."""
    desktop_kill_grace: float = 1.0
    """Seconds a session's processes get between SIGTERM and SIGKILL when the session is reset after its task."""

    # --- Model providers (shared/models.py, worker/providers/) ---------------------------
    models: str = ""
    """Model registry entries on top of the built-in ones: a JSON object ``{"<model name or glob>": {entry}}``,
    or the path of a file holding one. Entry keys: provider, model, base_url, api_key, api_key_env, coordinates,
    dialect, tool, max_pixels, min_pixels, max_long_edge, max_tokens, send_temperature (``shared/models.py``).
    The API and every worker must see the same value."""
    model_prices: str = ""
    """Per-model prices as JSON ``{"<model name or glob>": {"input": USD, "output": USD}}`` per million tokens;
    a task's ``cost`` is null for a model with no price."""
    model_timeout: float = 120.0
    """Seconds one model call may take (per attempt; the SDK's own timeout)."""
    model_max_retries: int = 2
    """Retries of a model call on 408/409/429/5xx and connection errors, with the SDK's backoff honouring
    ``retry-after``; after the last one the task fails with exit code 7."""
    model_screenshots_kept: int = 3
    """Screenshots kept in a client-side conversation history (Anthropic, OpenAI-compatible servers); older
    ones are replaced by a text placeholder."""
    auto_approve_safety_checks: bool = False
    """Acknowledge a model's pending safety checks without pausing the task for the user."""
    provider_limit_window: int = 60
    """Seconds of the window a model entry's ``rpm`` and ``tpm`` count in (60: per minute, as the names say; a
    shorter window divides the same counts over less time)."""

    # --- metrics and logs (docs/operations.md "Metrics") ---------------------------------
    metrics_port: int = 0
    """Port of a worker's Prometheus endpoint (``/metrics`` of its per-process figures, every pool process of the
    worker summed: step latency, slots, queue wait, task duration, control latency); 0: none. The API serves the
    fleet-wide figures at its own ``GET /metrics``."""
    metrics_host: str = "0.0.0.0"
    """Address a worker's metrics port binds to (bind it to the operators' network)."""
    metrics_token: str = ""
    """When set, ``GET /metrics`` (API and workers) requires ``Authorization: Bearer <token>``; else it needs no
    key (bind it to the operators' network)."""
    metrics_dir: str = ""
    """Folder of a worker's per-process metric files (prometheus-client's multiprocess mode); default a folder of
    its own under the temporary folder (``TMPDIR``), emptied when the worker starts."""
    log_format: str = "text"
    """``text`` (a terminal's lines) or ``json``: one JSON object per line with ``task_id``, ``tenant``, ``worker``
    and ``attempt`` on every line (null where no task is concerned), for the API and the workers alike."""


def _coerce(raw: str, current: Any, name: str) -> Any:
    if isinstance(current, bool):
        value = raw.strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a boolean, got {raw!r}")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected an integer, got {raw!r}") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a number, got {raw!r}") from None
    if isinstance(current, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``LODESTAR_*`` variables in ``env`` (default ``os.environ``), then ``overrides``.

    Raises:
        ValueError: a variable cannot be parsed into its field's type (the message names the variable).
        TypeError: an override names no field.
    """
    env = os.environ if env is None else env
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _coerce(raw, getattr(base, f.name), f.name)
    values.update(overrides)
    return dataclasses.replace(base, **values)

