"""Marshmallow schemas of the HTTP contract (Lightcone Agent Tasks, ``../shared/API.md``) and Lodestar's extras.

Start parameters follow the ``tzafon`` SDK 2.44 ``TaskStartParams`` field for field; the limits come from
``Settings`` so an operator can raise them, hence the :func:`make_start_schema` factory. The same schemas generate
the OpenAPI document (``api/openapi.py``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from shared.environments import ENVIRONMENT_ID_HELP, PERSISTENT_HELP
from shared.models import registry as model_registry
from shared.netguard import DOMAIN_MAX_CHARS, DOMAIN_PATTERN, clean_domain_patterns
from shared.output_schema import check_schema
from shared.secrets import NAME
from shared.settings import Settings
from shared.states import PRIORITIES, ExitCode, Status
from shared.task import DEFAULT_TEMPERATURE, DEFAULT_VIEWPORT, KINDS, OFFLINE_AGENTS

IGNORED_PARAMS = ("computer_id", "on_missing_computer", "keep_alive", "terminate_on_completion", "harness_version",
                  "stream_deltas", "agent_icon", "thread_id")
"""Start parameters accepted for SDK compatibility that have no effect yet (stated in the OpenAPI description).
``persistent`` / ``save_session`` save the task's environment into ``environment_id`` when it completes
(``shared/store/environments.py``)."""

KIND_DEFAULTED = "_kind_defaulted"
"""Set (True) in loaded start parameters whose ``kind`` was not given but defaulted."""

HTTP_URL_PATTERN = (r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[^\x00-\x20\x7f/?#@]*@)?"
                    r"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?(?:[/?#][^\x00-\x20\x7f]*)?$")
"""An http(s) URL: scheme, optional user info, an ASCII host name or IPv4 address or [IPv6], an optional port, then
anything but spaces and control characters. The same pattern validates requests and is published in the OpenAPI
document, so the two cannot disagree (reachability is checked where the URL is used: the browser's and the
webhooks' network guards)."""


class Pattern(validate.Regexp):
    """``validate.Regexp`` that must match the whole string (``re.fullmatch``: a trailing newline does not slip
    past ``$``), as JSON Schema's ``pattern`` does for an anchored expression. apispec publishes it as ``pattern``."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class StrictInt(fields.Int):
    """A JSON integer: an int, or a number with no fractional part (``5.0``, as JSON Schema counts integers); never
    a string, a boolean or ``2.5``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictFloat(fields.Float):
    """A JSON number (int or float), never a numeric string or a boolean; NaN and infinities refused."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBool(fields.Boolean):
    """JSON ``true`` or ``false`` only (not 1, "yes", "true")."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class ContextTurnSchema(Schema):
    """A prior conversation turn that seeds the agent's transcript (unknown keys are ignored)."""

    class Meta:
        unknown = EXCLUDE

    role = fields.Str(required=True, validate=validate.OneOf(["user", "assistant"]))
    content = fields.Str(required=True, validate=validate.Length(max=20_000))


def make_start_schema(settings: Settings) -> Schema:
    """The schema of POST /agent/tasks bodies, with limits from ``settings``.

    ``load`` returns the cleaned parameters with the documented defaults applied (kind: "browser" when
    ``start_url`` is set, else ``settings.default_kind``; model "tzafon.northstar-cua-fast"; max_steps 100;
    temperature 0.2; screenshot_mode "url"; viewport 1280x720; priority "normal").

    Raises (from ``load``):
        marshmallow.ValidationError: ``messages`` maps each bad field to its reasons.
    """
    s = settings
    known_models = model_registry(s)  # parsed here: a malformed LODESTAR_MODELS stops the API at startup

    class TaskStartSchema(Schema):
        class Meta:
            unknown = EXCLUDE

        instruction = fields.Str(required=True, validate=validate.Length(1, s.max_instruction_chars),
                                 metadata={"description": "The task prompt. For agent_type=scripted, the script."})
        kind = fields.Str(validate=validate.OneOf(KINDS), metadata={
            "enum": [k for k in KINDS if k in s.kinds],  # the document offers only the kinds with workers
            "description": "browser | desktop (those with workers on this deployment, LODESTAR_KINDS); default "
                           "browser when start_url is set."})

        @validates("kind")
        def _kind_is_served(self, value: str, **_: Any) -> None:
            if value in KINDS and value not in s.kinds:
                raise ValidationError(f"no {value} workers on this deployment (LODESTAR_KINDS={','.join(s.kinds)})")

        model = fields.Str(load_default=s.default_model, validate=validate.Length(1, 200))
        agent_type = fields.Str(validate=validate.OneOf(OFFLINE_AGENTS),
                                metadata={"description": "Offline agent: scripted | heuristic."})
        max_steps = StrictInt(load_default=s.default_max_steps, validate=validate.Range(1, s.max_steps_limit))
        max_duration_seconds = StrictInt(load_default=s.default_max_duration,
                                         validate=validate.Range(1, s.max_duration_limit))
        temperature = StrictFloat(load_default=DEFAULT_TEMPERATURE, validate=validate.Range(0, 2), allow_nan=False)
        screenshot_mode = fields.Str(load_default="url", validate=validate.OneOf(["url", "base64"]))
        viewport_width = StrictInt(load_default=DEFAULT_VIEWPORT[0],
                                    validate=validate.Range(s.viewport_min_width, s.viewport_max_width))
        viewport_height = StrictInt(load_default=DEFAULT_VIEWPORT[1],
                                     validate=validate.Range(s.viewport_min_height, s.viewport_max_height))
        start_url = fields.Str(validate=[validate.Length(max=4096), Pattern(HTTP_URL_PATTERN, error="Not a valid "
                                                                               "http(s) URL.")])
        system_prompt = fields.Str(validate=validate.Length(max=s.max_system_prompt_chars))
        context = fields.List(fields.Nested(ContextTurnSchema), validate=validate.Length(max=s.max_context_turns))
        metadata = fields.Dict(keys=fields.Str(validate=validate.Length(1, 64)),
                               values=fields.Str(validate=validate.Length(max=512)),
                               validate=validate.Length(max=s.max_metadata_keys))
        idempotency_key = fields.Str(validate=validate.Length(1, 255))
        priority = fields.Str(load_default="normal", validate=validate.OneOf(PRIORITIES),
                              metadata={"description": "Lodestar: high | normal | low."})
        stream_mode = fields.Str(load_default="verbose", validate=validate.OneOf(["verbose", "concise"]))
        thread_id = fields.Str(validate=validate.Length(max=255))
        webhook_url = fields.Str(validate=[validate.Length(max=2048),
                                           Pattern(HTTP_URL_PATTERN, error="Not a valid http(s) URL.")],
                                 metadata={"description": "Lodestar: POSTed the signed task JSON when it ends."})
        webhook_events = fields.Str(load_default="terminal", validate=validate.OneOf(["terminal", "all"]),
                                    metadata={"description": "Lodestar: terminal (default) or all status changes."})
        allowed_domains = fields.List(
            fields.Str(validate=validate.Length(1, DOMAIN_MAX_CHARS), metadata={"pattern": DOMAIN_PATTERN}),
            validate=validate.Length(1, s.max_allowed_domains),
            metadata={"description": "Lodestar: the only hosts the task's browser or desktop may reach: names "
                      "in ASCII (\"example.com\": that host; \"xn--bcher-kva.de\" for bücher.de), \"*.\" and a name "
                      "(\"*.example.org\": any name under it) or IP addresses (IPv6 in brackets). Applies together "
                      "with the tenant's allowed_domains (a host must match both lists) and the deployment's network "
                      "rules. Omit it for no restriction."})

        @validates("allowed_domains")
        def _patterns_are_hosts(self, value: list[str], **_: Any) -> None:
            try:
                clean_domain_patterns(value)
            except ValueError as exc:
                raise ValidationError(str(exc)) from None

        persistent = StrictBool(metadata={"description": PERSISTENT_HELP})
        save_session = StrictBool(metadata={"description": "The same as persistent."})
        environment_id = fields.Str(validate=validate.Length(max=255), metadata={"description": ENVIRONMENT_ID_HELP})
        computer_id = fields.Str(validate=validate.Length(max=255))
        on_missing_computer = fields.Str(validate=validate.OneOf(["fail", "restore", "create_new"]))
        keep_alive = StrictBool()
        terminate_on_completion = StrictBool()
        harness_version = fields.Str(validate=validate.OneOf(["v1", "v2"]))
        stream_deltas = StrictBool()
        agent_icon = fields.Str(validate=validate.Length(max=2048))
        output_schema = fields.Dict(metadata={"description": (
            "Lodestar: a JSON Schema (draft 2020-12) the final answer must match; `result` is then the parsed JSON "
            "value. Models are asked for it in their provider's way (OpenAI text.format, Anthropic a final_answer "
            "tool, a prompt for the others), scripted agents answer with `done <JSON>`. An answer that does not "
            f"match is sent back to the model {s.output_schema_retries} time(s), then the task fails (exit code "
            "1) with the validation errors in `error`.")})

        @validates("output_schema")
        def _output_schema_is_a_schema(self, value: dict[str, Any], **_: Any) -> None:
            if len(json.dumps(value, separators=(",", ":"))) > s.max_output_schema_chars:
                raise ValidationError(f"at most {s.max_output_schema_chars} characters of JSON")
            try:
                check_schema(value)
            except ValueError as exc:
                raise ValidationError(str(exc)) from None

        max_cost_usd = fields.Float(validate=validate.Range(0, 1e9, min_inclusive=False), allow_nan=False,
                                    metadata={"description": (
                                        "Lodestar: the most USD the task's model calls may cost (model prices: "
                                        "LODESTAR_MODEL_PRICES). The call that would go over it is not made: the "
                                        "task fails with exit code 8. Offline agents cost 0.")})

        replay_of = fields.Str(validate=validate.Length(1, 128), metadata={"description": (
            "Lodestar: the id of an ended task of yours to replay: its recorded actions are repeated with no model "
            "(no cost) in its environment (kind, start_url, viewport), checking before each step that the page is "
            "still as recorded (the URL, and the accessible name of the element a click hits); the first "
            "divergence fails the task with exit code 9 and the step number in `error`. An unknown id (or "
            "another tenant's) is a 404 naming replay_of, a task not ended yet a 409. The instruction is kept as a "
            "label.")})
        secrets = fields.Dict(
            keys=fields.Str(validate=validate.Regexp(r"\A" + NAME.pattern + r"\Z", error=(
                "a secret's name is a letter or _ then letters, digits or _ (64 at most)"))),
            values=fields.Str(validate=validate.Length(1, 4096)), validate=validate.Length(max=50),
            metadata={"description": "Lodestar: {name: value} typed where the instruction or a script writes "
                                     "{{name}}; the agent never sees the values (sealed with LODESTAR_SECRETS_KEY, "
                                     "dropped when the task ends)."})

        @validates("secrets")
        def _secrets_can_be_sealed(self, value: dict[str, str], **_: Any) -> None:
            if value and not s.secrets_key:
                raise ValidationError("this deployment has no LODESTAR_SECRETS_KEY to seal secrets with")

        @validates_schema
        def _model_has_a_policy(self, data: dict[str, Any], **_: Any) -> None:
            """A task needs an offline ``agent_type`` or a ``model`` the registry knows (``shared/models.py``); a
            budget needs the model's price; a structured answer needs a model or the scripted agent."""
            if not data.get("agent_type") and not known_models.known(data.get("model") or ""):
                raise ValidationError(
                    f"model {data.get('model')!r} has no provider on this deployment (known: "
                    f"{known_models.describe()}); or set agent_type to one of {', '.join(OFFLINE_AGENTS)}",
                    field_name="model")
            priced = data.get("max_cost_usd") is not None and not data.get("agent_type")
            spec = known_models.resolve(data.get("model") or "") if priced else None
            if spec is not None and spec.price_input is None:
                raise ValidationError(
                    f"model {spec.name!r} has no price on this deployment (LODESTAR_MODEL_PRICES), so its cost "
                    "cannot be counted", field_name="max_cost_usd")
            if data.get("output_schema") is not None and data.get("agent_type") == "heuristic":
                raise ValidationError("the heuristic agent gives no structured answers; use a model or the "
                                      "scripted agent (done <JSON>)", field_name="output_schema")

        @post_load
        def _defaults(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
            if "kind" not in data:  # (a task naming an environment takes its kind: api/submission.py)
                data["kind"] = "browser" if data.get("start_url") else s.default_kind
                data[KIND_DEFAULTED] = True
            if data.get("allowed_domains"):
                data["allowed_domains"] = clean_domain_patterns(data["allowed_domains"])
            return data

    return TaskStartSchema()


def make_message_schema(settings: Settings) -> Schema:
    """The schema of POST /agent/tasks/{id}/messages bodies: ``{"message": str}`` of 1 to
    ``settings.max_message_chars`` characters (other keys are ignored)."""

    class MessageSchema(Schema):
        class Meta:
            unknown = EXCLUDE

        message = fields.Str(required=True, validate=validate.Length(1, settings.max_message_chars))

    return MessageSchema()


IDEMPOTENCY_KEY_PATTERN = "^[!-~]([ -~]{0,253}[!-~])?$"
"""An ``Idempotency-Key`` header (POST /agent/tasks/{id}/messages): 1 to 255 printable ASCII characters, no space
at either end (HTTP strips those)."""

CANCELLABLE = ("queued", "running", "paused")
"""Statuses a cancel can end."""
CANCEL_STATUSES_PATTERN = "^((queued|running|paused)(,(queued|running|paused))*)?$"


class CancelStatuses(fields.Field):
    """``filter.status`` of a bulk cancel: a comma-separated string or a list of queued | running | paused; empty
    (or absent) means all three. Loads as a tuple of statuses."""

    default_error_messages = {"invalid": "Must be among: queued, running, paused (a list or comma-separated)."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if isinstance(value, str) and re.fullmatch(CANCEL_STATUSES_PATTERN, value):
            statuses = tuple(part for part in value.split(",") if part)
        elif isinstance(value, list) and all(isinstance(v, str) and v in CANCELLABLE for v in value):
            statuses = tuple(value)
        else:
            raise self.make_error("invalid")
        return statuses or CANCELLABLE


class CancelFilterSchema(Schema):
    """Which of the caller's active tasks a bulk cancel ends (all given conditions must hold)."""

    class Meta:
        unknown = EXCLUDE

    status = CancelStatuses(metadata={"anyOf": [
        {"type": "string", "pattern": CANCEL_STATUSES_PATTERN},
        {"type": "array", "items": {"type": "string", "enum": list(CANCELLABLE)}}]})
    kind = fields.Str()
    model = fields.Str()
    batch_id = fields.Str()
    metadata = fields.Dict(keys=fields.Str(), values=fields.Str())


def make_cancel_schema(settings: Settings) -> Schema:
    """The schema of POST /agent/tasks/cancel bodies: ``{"task_ids": [str, ...]}`` (at most
    ``settings.batch_max_items``) or ``{"filter": {status, kind, model, metadata, batch_id}}``; with both,
    ``task_ids`` wins. ``load`` raises ``marshmallow.ValidationError`` (on ``task_ids`` when neither is given)."""

    class CancelManySchema(Schema):
        class Meta:
            unknown = EXCLUDE

        task_ids = fields.List(fields.Str(), validate=validate.Length(max=settings.batch_max_items))
        filter = fields.Nested(CancelFilterSchema)

        @validates_schema
        def _names_tasks(self, data: dict[str, Any], **_: Any) -> None:
            if "task_ids" not in data and "filter" not in data:
                raise ValidationError('give "task_ids" (a list) or "filter" (an object)', field_name="task_ids")

    return CancelManySchema()


class _Answer(Schema):
    """Base of response schemas: clients must accept fields added later (``additionalProperties`` allowed)."""

    class Meta:
        unknown = INCLUDE


class TaskStartResponseSchema(_Answer):
    task_id = fields.Str(required=True)
    status = fields.Str(required=True)
    idempotency_key = fields.Str(allow_none=True)
    reused = fields.Bool()


class StatusResponseSchema(_Answer):
    status = fields.Str(required=True, metadata={"enum": [str(s) for s in Status]})


class TaskSchema(_Answer):
    """GET /agent/tasks/{id}: Lightcone's ``{task_id, status, exit_code}`` plus Lodestar's fields.

    Times are ISO 8601 UTC strings; ``exit_code`` is null until the task ends (codes: ``shared.states.ExitCode``).
    """

    task_id = fields.Str(required=True)
    status = fields.Str(required=True, metadata={"enum": [str(s) for s in Status]})
    exit_code = fields.Int(allow_none=True, metadata={"description": "; ".join(
        f"{c.value}: {c.name.lower()}" for c in ExitCode)})
    kind = fields.Str()
    model = fields.Str()
    agent_type = fields.Str(allow_none=True)
    priority = fields.Str()
    instruction = fields.Str()
    created_at = fields.Str()
    started_at = fields.Str(allow_none=True)
    finished_at = fields.Str(allow_none=True)
    attempt = fields.Int(metadata={"description": "How many times a worker has started the task (1 on its first "
                                  "run; more after its worker was lost)."})
    worker = fields.Str(allow_none=True, metadata={"description": "The worker process (host:pid) running the task; "
                                                   "null while nobody holds it (queued, or paused and released)."})
    steps_taken = fields.Int()
    max_steps = fields.Int()
    progress = fields.Float(metadata={"description": "steps_taken / max_steps, 1.0 once ended"})
    message = fields.Str(allow_none=True, metadata={"description": "One line on what the agent is doing now (e.g. "
                         "\"waiting for the openai rate limit (rpm 60)\")."})
    result = fields.Raw(allow_none=True, metadata={"description": "The agent's final answer: a string, or, for a "
                        "task with an output_schema, the JSON value (object, array, ...) that matched it."})
    error = fields.Str(allow_none=True)
    current_url = fields.Str(allow_none=True)
    last_screenshot_url = fields.Str(allow_none=True, metadata={"description": "The last step's screenshot: a "
                                     "signed URL (expires, sig) that loads without the bearer key until it expires "
                                     "(LODESTAR_URL_TTL, 1 h by default); null before the first step."})
    metadata = fields.Dict(keys=fields.Str(), values=fields.Str())
    idempotency_key = fields.Str(allow_none=True)
    usage = fields.Dict(allow_none=True, metadata={"description": "Model tokens so far: input_tokens, "
                        "output_tokens, total_tokens, calls (null for offline agents)."})
    cost = fields.Float(allow_none=True, metadata={"description": "USD spent on the model so far, from the "
                        "deployment's price table (null when the model has no price)."})
    allowed_domains = fields.List(fields.Str(), metadata={"description": "The task's host patterns, normalized "
                                  "([] when it set none)."})
    max_cost_usd = fields.Float(allow_none=True, metadata={"description": "The task's budget in USD (exit code 8 "
                                "when its next model call would go over it)."})
    output_schema = fields.Dict(allow_none=True, metadata={"description": "The JSON Schema the answer must match."})
    persistent = fields.Bool(metadata={"description": "The task saves its environment when it completes."})
    environment_id = fields.Str(allow_none=True, metadata={"description": (
        "The saved environment the task starts from and (persistent) saves into; null when neither.")})
    batch_id = fields.Str(allow_none=True, metadata={"description": "The batch it was submitted in (null: none)."})
    replay_of = fields.Str(allow_none=True, metadata={"description": "The recorded task this one replays (null "
                           "when it is not a replay)."})
    queue_position = fields.Int(allow_none=True, metadata={"description": (
        "While queued: its place in the queue of its kind, across tenants (1: the next task a free worker of that "
        "kind takes), ordered as the broker serves them (priority, then created_at); approximate (a task handed "
        "back goes to the front of its priority but keeps its place here). null when not queued, or deferred by "
        "its tenant's max_running.")})
    wait_reason = fields.Str(allow_none=True, metadata={"description": (
        "While queued, why it has not started: \"tenant max_running reached\", \"no worker for kind <kind>\" "
        "(no worker of that kind answered within 3 reaper intervals), \"rate limited\" (its model's provider "
        "limit is full or blocked now), or \"queued behind N tasks\". null when not queued.")})


class TaskListSchema(_Answer):
    """GET /agent/tasks: a page of tasks, newest first; ``next_cursor`` is null on the last page."""

    data = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.Str(required=True, allow_none=True)
    has_more = fields.Bool(required=True)


class _BatchRowSchema(_Answer):
    index = fields.Int(required=True)
    task_id = fields.Str(required=True)
    status = fields.Str(required=True)
    reused = fields.Bool()


class _ErrorDetailSchema(_Answer):
    type = fields.Str(required=True)
    message = fields.Str(required=True)
    fields_ = fields.Dict(data_key="fields", metadata={"description": "Each bad field (a dotted path for nested "
                                                                      "ones) and its reasons."})


class _BatchErrorSchema(_Answer):
    index = fields.Int(required=True)
    error = fields.Nested(_ErrorDetailSchema, required=True)


class BatchOutcomeSchema(_Answer):
    """POST /agent/tasks/batch: which items were accepted (as tasks) and why the others were not."""

    batch_id = fields.Str(required=True)
    accepted = fields.Int(required=True)
    rejected = fields.Int(required=True)
    tasks = fields.List(fields.Nested(_BatchRowSchema), required=True)
    errors = fields.List(fields.Nested(_BatchErrorSchema), required=True)


class _SkippedSchema(_Answer):
    task_id = fields.Str(required=True)
    reason = fields.Str(required=True)


class CancelResultSchema(_Answer):
    """POST /agent/tasks/cancel: the ids cancelled, and the others with the reason."""

    cancelled = fields.List(fields.Str(), required=True)
    skipped = fields.List(fields.Nested(_SkippedSchema), required=True)


class ErrorSchema(_Answer):
    """Every error body: ``{"error": {"type", "message", "fields"?}}``; ``fields`` maps a field to its reasons."""

    error = fields.Nested(_ErrorDetailSchema, required=True)


class EventSchema(_Answer):
    """One event in an SSE ``data:`` line (``id:`` is ``seq``). ``type``: status | step | message | blocked | end.
    Step events carry ``step``, ``actions``, ``results``, ``thought``, ``url``, ``messages``, ``usage`` (model
    tasks: this step's tokens and cost), ``native`` (model tasks: the model's own action), ``timings``
    (``observe_ms``, ``decide_ms``, ``act_ms``), ``elements`` (what each click hit: ``{role, name}``), ``aria``
    (true: the step's ARIA snapshot is in its trajectory) and ``screenshot_url`` (url mode: a signed URL that
    loads without the bearer key until it expires) or ``screenshot`` (a base64 data URL); a blocked event (the
    egress proxy refused a request: ``url``, ``host``, ``port``, ``method``, ``reason``) comes once per refused host
    and port;
    a status event for a model's question carries ``reason: "ask_user"`` and ``question``; the end event carries
    ``status``, ``exit_code``, ``result`` (text, or the JSON answer of a task with an ``output_schema``) and
    ``error``."""

    seq = fields.Int(required=True)
    type = fields.Str(required=True)
    task_id = fields.Str(required=True)
    ts = fields.Float(required=True, metadata={"description": "epoch seconds"})
