"""The task record: one frozen type for a task, its defaults, and its conversions.

A :class:`Task` is built once from a validated start request (:meth:`Task.from_request`), stored as a Redis hash
(:meth:`Task.to_redis`, read back with :meth:`Task.from_redis`) and answered as JSON (:meth:`Task.to_json`, the
shape of ``shared.schemas.TaskSchema``). Every layer passes ``Task`` objects: the API builds them, the store
writes and reads them, the worker runs them. Nothing else knows how a field is encoded in Redis.

Encoding: one hash field per record field, the value as text (ints and floats as decimal text, booleans "1" / "0",
dicts and lists as compact JSON, a :data:`JSONValue` field (``result``) as JSON text, None as ""). A field that holds
its default is not stored (a queued task's hash is about a third smaller), nor is ``task_id`` (it is the end of the
hash's key).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from shared.states import TERMINAL, Status

OFFLINE_AGENTS = ("scripted", "heuristic")
"""``agent_type`` values that run with no model provider (``worker/agents.py`` registers one policy for each)."""

KINDS = ("browser", "desktop")
"""Kinds of environment a task may ask for; each is a Celery queue of its own."""

DEFAULT_MODEL = "tzafon.northstar-cua-fast"
"""Model when the request names none (Lightcone's documented default; ``LODESTAR_DEFAULT_MODEL`` overrides it)."""
DEFAULT_MAX_STEPS = 100
"""Steps when the request gives no ``max_steps`` (Lightcone's default; ``LODESTAR_DEFAULT_MAX_STEPS``)."""
DEFAULT_MAX_DURATION = 1800
"""Seconds of wall-clock time when the request gives no ``max_duration_seconds`` (``LODESTAR_DEFAULT_MAX_DURATION``)."""
DEFAULT_TEMPERATURE = 0.2
"""Sampling temperature when the request gives none (Lightcone's documented default)."""
DEFAULT_VIEWPORT = (1280, 720)
"""Viewport width and height in CSS pixels when the request gives none (Lightcone's documented default)."""

JSONValue: TypeAlias = Any
"""Any JSON value (object, array, string, number, boolean, null). A field of this type is stored as its JSON text;
a value written before the field had this type (plain text that is not JSON) reads back as that text."""


@dataclass(frozen=True)
class Task:
    """One agent task: what was asked (set at submit, never changed) and where it stands (written by the store's
    transitions as it runs). Times are epoch seconds; ``cost`` is USD; ``usage`` is
    ``{input_tokens, output_tokens, total_tokens, calls}``.

    Defaults here are the documented Lightcone defaults where one exists (``../shared/API.md``); an operator's
    ``LODESTAR_DEFAULT_*`` settings are applied by the request schema before a ``Task`` is built.
    """

    task_id: str
    tenant: str
    instruction: str
    created_at: float
    # -- what was asked ----------------------------------------------------------------------------------------------
    kind: str = "browser"
    model: str = DEFAULT_MODEL
    agent_type: str | None = None
    priority: str = "normal"
    max_steps: int = DEFAULT_MAX_STEPS
    max_duration_seconds: int = DEFAULT_MAX_DURATION
    temperature: float = DEFAULT_TEMPERATURE
    screenshot_mode: str = "url"
    stream_mode: str = "verbose"
    viewport_width: int = DEFAULT_VIEWPORT[0]
    viewport_height: int = DEFAULT_VIEWPORT[1]
    persistent: bool = False
    """Save the environment's state into ``environment_id`` when the task completes (``shared/store/
    environments.py``)."""
    environment_id: str | None = None
    """The saved environment the task starts from (restored when its environment opens), and, for a ``persistent``
    task, the one it saves into (a new one, made at submit, when the request named none)."""
    start_url: str | None = None
    system_prompt: str | None = None
    context: list[dict[str, str]] = field(default_factory=list)
    """Prior conversation turns ``[{"role": "user" | "assistant", "content": str}]`` that seed the transcript."""
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    webhook_url: str | None = None
    webhook_events: str = "terminal"
    allowed_domains: list[str] = field(default_factory=list)
    """Host patterns the task's environment may reach ("example.com", "*.example.org"); empty: any (the deployment's
    network rules and the tenant's own ``allowed_domains`` still apply; ``shared/netguard.py``)."""
    batch_id: str | None = None
    sealed_secrets: dict[str, str] = field(default_factory=dict)
    """The task's secrets, sealed (``shared/secrets.py``: name -> Fernet token); never shown, dropped at the end."""
    output_schema: dict[str, Any] | None = None
    """A JSON Schema (draft 2020-12, checked at submit) the agent's final answer must match; ``result`` is then the
    parsed answer instead of text."""
    max_cost_usd: float | None = None
    """The most USD the task's model calls may cost; the call that would go over it is not made (exit code 8)."""
    replay_of: str | None = None
    """The recorded task this one replays (same tenant): its actions repeated with no model (``worker/replay.py``)."""
    # -- where it stands ---------------------------------------------------------------------------------------------
    status: Status = Status.QUEUED
    exit_code: int | None = None
    attempt: int = 0
    """How many times a worker has started the task (1 on its first run)."""
    worker: str | None = None
    """The worker process ("host:pid") that last claimed it."""
    started_at: float | None = None
    finished_at: float | None = None
    steps_taken: int = 0
    message: str | None = None
    """One line on what the agent is doing now."""
    result: JSONValue = None
    """The agent's final answer: text, or (with ``output_schema``) the JSON value that matched it."""
    error: str | None = None
    current_url: str | None = None
    usage: dict[str, int] | None = None
    cost: float | None = None
    messages_delivered: int = 0
    """Injected messages already handed to the policy (the inbox's read position)."""
    event_seq: int = 0
    """The seq of the task's latest event (its event log's length, trimmed entries included)."""

    # -- conversions -------------------------------------------------------------------------------------------------
    @classmethod
    def from_request(cls, params: Mapping[str, Any], *, task_id: str, tenant: str, created_at: float,
                     batch_id: str | None = None, default_webhook_url: str | None = None,
                     sealed_secrets: dict[str, str] | None = None) -> Task:
        """A new queued task from start parameters already validated (and defaulted) by
        ``shared.schemas.make_start_schema``. ``persistent`` is also set by the SDK's ``save_session``; the
        tenant's ``default_webhook_url`` applies when the request names none; ``sealed_secrets`` are the request's
        ``secrets`` once sealed (the values themselves never enter a record). Unknown parameters are ignored."""
        asked = {name: params[name] for name in _REQUEST_FIELDS if params.get(name) is not None}
        if not asked.get("environment_id"):  # "" names none
            asked.pop("environment_id", None)
        if sealed_secrets:
            asked["sealed_secrets"] = sealed_secrets
        asked["persistent"] = bool(params.get("persistent") or params.get("save_session"))
        if not asked.get("webhook_url") and default_webhook_url:
            asked["webhook_url"] = default_webhook_url
        return cls(task_id=task_id, tenant=tenant, created_at=created_at, batch_id=batch_id, **asked)

    def to_redis(self) -> dict[str, str]:
        """The hash fields to store: every field but ``task_id`` and those holding their default (``status`` is
        always stored: the store's scripts read it)."""
        out = {}
        for name in _STORED:
            value = getattr(self, name)
            if value != _DEFAULTS.get(name, _REQUIRED) or name == "status":
                out[name] = _encode(value, name)
        return out

    @classmethod
    def from_redis(cls, task_id: str, raw: Mapping[bytes, bytes]) -> Task:
        """The task a hash holds (as redis-py returns it, bytes to bytes). Fields the store keeps for itself
        (:data:`STORE_ONLY_FIELDS`, and names starting with one of :data:`STORE_ONLY_PREFIXES`) are skipped.

        Raises:
            ValueError: a stored field is not one of the record's, or does not parse as its type.
        """
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = key.decode()
            if name in STORE_ONLY_FIELDS or name.startswith(STORE_ONLY_PREFIXES):
                continue
            values[name] = decode_field(name, value.decode())
        return cls(task_id=task_id, **values)

    def to_json(self, screenshot_url: Callable[[Task, int], str]) -> dict[str, Any]:
        """The public JSON of the task (shape: ``shared.schemas.TaskSchema``): Lightcone's ``task_id``, ``status``
        and ``exit_code`` plus Lodestar's fields, times as ISO 8601 UTC. ``screenshot_url(task, step)`` makes
        the URL of a step's screenshot."""
        steps = self.steps_taken
        ended = self.status in TERMINAL
        return {
            "task_id": self.task_id, "status": str(self.status), "exit_code": self.exit_code, "kind": self.kind,
            "model": self.model, "agent_type": self.agent_type, "priority": self.priority,
            "instruction": self.instruction, "created_at": iso_time(self.created_at),
            "started_at": iso_time(self.started_at), "finished_at": iso_time(self.finished_at),
            "attempt": self.attempt, "worker": self.worker, "steps_taken": steps, "max_steps": self.max_steps,
            "progress": 1.0 if ended else round(min(steps / max(self.max_steps, 1), 1.0), 4),
            "message": self.message, "result": self.result, "error": self.error, "current_url": self.current_url,
            # every step stores the screenshot it acted on
            "last_screenshot_url": screenshot_url(self, steps) if steps else None,
            "metadata": self.metadata, "idempotency_key": self.idempotency_key, "usage": self.usage,
            "cost": self.cost, "allowed_domains": self.allowed_domains, "max_cost_usd": self.max_cost_usd,
            "output_schema": self.output_schema, "persistent": self.persistent, "environment_id": self.environment_id,
            "batch_id": self.batch_id,
            "replay_of": self.replay_of,
            # where a queued task stands: filled in by the API from the store (``TaskStore.queue``)
            "queue_position": None, "wait_reason": None,
        }

    @property
    def ended(self) -> bool:
        """The task reached a terminal status."""
        return self.status in TERMINAL


STORE_ONLY_FIELDS = frozenset({"first_status"})
"""Hash fields the store keeps for its own bookkeeping, not part of the record (see ``shared/store``)."""
STORE_ONLY_PREFIXES = ("msgkey:",)
"""Prefixes of hash fields the store keeps for its own bookkeeping: ``msgkey:<sha256>`` records an injected
message's ``Idempotency-Key`` (``shared/store/keys.py``), so it lives exactly as long as the record."""

_REQUIRED = object()
_FIELDS = {f.name: f for f in dataclasses.fields(Task)}
_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
    for f in _FIELDS.values() if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
}
_STORED = tuple(name for name in _FIELDS if name != "task_id")
_REQUEST_FIELDS = (
    "instruction", "kind", "model", "agent_type", "priority", "max_steps", "max_duration_seconds", "temperature",
    "screenshot_mode", "stream_mode", "viewport_width", "viewport_height", "start_url", "system_prompt", "context",
    "metadata", "idempotency_key", "webhook_url", "webhook_events", "allowed_domains", "output_schema",
    "max_cost_usd", "environment_id", "replay_of",
)
"""Start parameters that become record fields as they are."""


def _kind_of(hint: Any) -> type:
    """The base type of a field's annotation (``int | None`` -> int, ``dict[str, str]`` -> dict; :data:`JSONValue`
    -> ``object``: stored as JSON text)."""
    if hint is Any:
        return object
    options = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    base = typing.get_origin(options[0]) or options[0]
    return base if isinstance(base, type) else str


_TYPES: dict[str, type] = {name: _kind_of(hint) for name, hint in typing.get_type_hints(Task).items()}


def _encode(value: Any, name: str) -> str:
    if value is None:
        return ""
    kind = _TYPES[name]
    if kind in (dict, list, object):
        return json.dumps(value, separators=(",", ":"))
    if kind is bool:
        return "1" if value else "0"
    return str(value)


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """Record fields to hash values, for a partial update (a transition's ``fields``).

    Raises:
        KeyError: a name is not a field of :class:`Task` (or is ``task_id``, which is never stored).
    """
    out = {}
    for name, value in fields.items():
        if name not in _TYPES or name == "task_id":
            raise KeyError(f"{name!r} is not a stored field of Task")
        out[name] = _encode(value, name)
    return out


def decode_field(name: str, text: str) -> Any:
    """One hash value back to its field's type ("" is None).

    Raises:
        ValueError: ``name`` is not a field of :class:`Task`, or ``text`` does not parse as its type.
    """
    kind = _TYPES.get(name)
    if kind is None:
        raise ValueError(f"{name!r} is not a field of Task")
    if text == "":
        return None
    if kind is object:
        try:
            return json.loads(text)
        except ValueError:  # stored as plain text, before the field held any JSON value
            return text
    if kind in (dict, list):
        return json.loads(text)
    if kind is bool:
        return text == "1"
    if kind is Status:
        return Status(text)
    return kind(text)


def screenshot_urls(base_url: str) -> Callable[[Task, int], str]:
    """An unsigned screenshot URL maker for :meth:`Task.to_json`: ``<base_url>/agent/tasks/<id>/screenshots/<step>``
    (opens with the bearer key only). The API and webhooks hand out signed ones: ``shared.signing.UrlSigner``."""
    base = base_url.rstrip("/")
    return lambda task, step: f"{base}/agent/tasks/{task.task_id}/screenshots/{step}"


def iso_time(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds and a "Z" ("2026-11-28T08:20:39.123Z"); None stays None."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None
