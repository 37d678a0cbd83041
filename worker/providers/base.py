"""The base of every provider adapter: :class:`ModelPolicy`, one model call per step through the provider's
official SDK, with usage and cost, SDK errors as ``PolicyError`` and unusable answers as failed steps.

What else the adapters share lives beside it: ``screen`` (screenshots and the one coordinate conversion),
``actions`` (the action builder and the pieces of the action tables) and ``answers`` (``AnswerError`` and the
readers of an answer's values).
"""

from __future__ import annotations

import email.utils
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from shared.models import ModelSpec, ProviderLimit
from shared.output_schema import answer_prompt
from shared.settings import Settings
from worker.computer import Action, Observation
from worker.policy import CallEstimate, Decision, Episode, Meter, PolicyError, StepRecord
from worker.providers.actions import ActionBuilder, done
from worker.providers.answers import AnswerError
from worker.providers.screen import Frame, Screen

log = logging.getLogger(__name__)

IMAGE_PIXELS_PER_TOKEN = 750
"""Screenshot pixels per input token when a first call's tokens are estimated (Anthropic's published rule of thumb,
``tokens = width * height / 750``; OpenAI's tiles come out close)."""
TEXT_CHARS_PER_TOKEN = 4
"""Characters of text per input token when a first call's tokens are estimated."""


class NoMeter:
    """The meter of a policy run outside a worker (tests, harnesses): no budgets, no shared rate limits."""

    def before_call(self, limit: ProviderLimit, estimate: CallEstimate) -> None:
        pass

    def after_call(self, limit: ProviderLimit, usage: dict[str, Any], estimate: CallEstimate) -> None:
        pass

    def blocked(self, limit: ProviderLimit, seconds: float) -> None:
        pass


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a response's ``retry-after-ms`` or ``retry-after`` (seconds, or an HTTP date) asks to wait; None
    when it asks nothing readable."""
    raw_ms = headers.get("retry-after-ms")
    try:
        if raw_ms is not None:
            return max(0.0, float(raw_ms) / 1000)
    except ValueError:
        pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def text_chars(value: Any) -> int:
    """Characters of text in a request body (images, as data URLs or base64 ``data``, left out)."""
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for k, v in value.items() if k != "data")
    if isinstance(value, list | tuple):
        return sum(text_chars(v) for v in value)
    return 0


def describe_api_error(provider: str, exc: BaseException) -> str:
    """``"<provider> API error <status>: <the provider's own message>"`` from an SDK exception: the body's
    ``error.message`` when there is one (OpenAI, Anthropic and Lightcone all answer ``{"error": {"message"}}``)."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
    message = message or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{provider} API error{f' {status}' if status else ''}: {message}"


def last_step_problems(episode: Episode) -> list[str]:
    """Errors of the previous step's actions, worded for the model (empty when it went well)."""
    last: StepRecord | None = episode.history[-1] if episode.history else None
    if last is None:
        return []
    return [f"The previous action failed: {r.error}" for r in last.results if not r.ok and r.error]


class ModelPolicy(ABC):
    """A ``Policy`` backed by a provider's model through its official SDK.

    Subclasses build the request (:meth:`_request`), send it through the SDK (:meth:`_send`, returning the answer's
    raw JSON so unknown action types are seen as sent), and parse it (:meth:`_parse`). The SDK client is built with
    ``settings.model_timeout`` and ``settings.model_max_retries`` (the SDK's own backoff honours ``retry-after``).

    Errors: an SDK error after its retries raises ``PolicyError`` with the provider's message (the loop fails the
    task with exit code 7); an unusable answer gives a ``Decision`` with ``error`` set (a failed step).
    """

    provider: ClassVar[str]
    needs_accessibility = False
    native_output: ClassVar[bool] = False
    """Whether the adapter asks for a task's ``output_schema`` in the provider's own way (OpenAI ``text.format``,
    Anthropic a tool); the others ask in the prompt (:meth:`_instruction`)."""
    http_client: ClassVar[Callable[..., Any] | None] = None
    """The SDK's ``DefaultHttpxClient``: the client is built on one that reports each 429's ``retry-after`` to
    the meter (:meth:`_saw_response`), including those the SDK retries by itself."""

    def __init__(self, spec: ModelSpec, episode: Episode, settings: Settings, client: Any = None,
                 meter: Meter | None = None):
        self.spec = spec
        self.settings = settings
        self.kind = episode.kind
        self.output_schema = episode.output_schema
        self.screen = Screen(spec)
        self.builder = ActionBuilder(self.screen, episode.kind)
        self.keep_screenshots = max(1, settings.model_screenshots_kept)
        self.meter: Meter = meter or NoMeter()
        self.limit = spec.limit()
        self.last_tokens: tuple[int, int] | None = None
        """``(input, output)`` tokens of the last call: the next call's estimate."""
        self.client = client if client is not None else self._make_client()

    # -- subclass hooks -------------------------------------------------------------------------------------------
    @abstractmethod
    def _make_client(self) -> Any:
        """The SDK client for ``self.spec`` (base URL and key from the spec, else the SDK's env vars)."""

    @abstractmethod
    def _request(self, frame: Frame, episode: Episode) -> dict[str, Any]:
        """The keyword arguments of this turn's SDK call."""

    @abstractmethod
    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        """Make the call; return the answer's JSON object. SDK exceptions propagate."""

    @abstractmethod
    def _parse(self, answer: dict[str, Any], episode: Episode) -> Decision:
        """Turn the answer into a Decision and advance the conversation state. Raises AnswerError when nothing
        usable came back (the state is then left as it was, so the next turn asks again)."""

    @abstractmethod
    def _tokens(self, answer: dict[str, Any]) -> tuple[int, int]:
        """``(input_tokens, output_tokens)`` reported in the answer (0 when absent)."""

    sdk_error: ClassVar[type[BaseException]] = Exception
    """The SDK's base exception class (``openai.OpenAIError``, ``anthropic.AnthropicError``, ...)."""

    # -- the decide step ------------------------------------------------------------------------------------------
    def decide(self, observation: Observation, episode: Episode) -> Decision:
        """One model call: the screenshot (and any injected messages) in, the next actions out.

        Raises:
            PolicyError: the call failed after the SDK's retries (HTTP error, timeout, connection), with the
                provider's message.
        """
        frame = self.screen.frame(observation)
        self.builder.frame = frame
        request = self._request(frame, episode)
        estimate = self.estimate(request, frame)
        self.meter.before_call(self.limit, estimate)  # budgets (exit code 8) and shared rate limits (waits)
        try:
            answer = self._send(request)
        except AnswerError as exc:
            return Decision([], error=f"{self.provider}: unusable answer: {exc}")
        except self.sdk_error as exc:
            raise PolicyError(describe_api_error(self.provider, exc)) from exc
        usage = self._usage(answer)
        self.last_tokens = (usage["input_tokens"], usage["output_tokens"])
        self.meter.after_call(self.limit, usage, estimate)  # on the task's record now, a pause or not
        try:
            decision = self._parse(answer, episode)
        except AnswerError as exc:
            decision = Decision([], error=f"{self.provider}: unusable answer: {exc}")
        return replace(decision, usage=usage, native=native_of(answer))

    def _usage(self, answer: dict[str, Any]) -> dict[str, Any]:
        try:
            tin, tout = self._tokens(answer)
        except (TypeError, ValueError, AttributeError):
            tin, tout = 0, 0
        return {"input_tokens": tin, "output_tokens": tout, "total_tokens": tin + tout, "calls": 1,
                "cost_usd": self.spec.cost_usd(tin, tout)}

    def estimate(self, request: dict[str, Any], frame: Frame) -> CallEstimate:
        """The next call's tokens and cost: the last call's tokens, or for a first call its input from the request
        (text characters / :data:`TEXT_CHARS_PER_TOKEN` + screenshot pixels / :data:`IMAGE_PIXELS_PER_TOKEN`,
        output not estimated)."""
        if self.last_tokens is not None:
            tin, tout = self.last_tokens
        else:
            tin = text_chars(request) // TEXT_CHARS_PER_TOKEN + frame.width * frame.height // IMAGE_PIXELS_PER_TOKEN
            tout = 0
        return CallEstimate(tin, tout, self.spec.cost_usd(tin, tout))

    def _instruction(self, episode: Episode) -> str:
        """The instruction as the model is sent it: with the request for an answer matching ``output_schema``
        when the adapter has no native way to ask for it."""
        if self.output_schema is not None and not self.native_output:
            return f"{episode.instruction}\n\n{answer_prompt(self.output_schema)}"
        return episode.instruction

    def _final(self, text: str | None) -> Action:
        """The ``done`` action of a final answer given as text (an adapter with a native structured output reads
        its JSON here)."""
        return done(text)

    def _saw_response(self, response: Any) -> None:
        """httpx response hook: a 429 that says how long to wait holds back every worker calling this model's
        limit scope for that long."""
        if response.status_code == 429:
            seconds = retry_after_seconds(response.headers)
            if seconds:
                try:
                    self.meter.blocked(self.limit, seconds)
                except Exception as exc:  # never fail the call over it
                    log.warning("could not share the provider's retry-after: %s", exc)

    def _client_options(self) -> dict[str, Any]:
        """Constructor options common to the three SDKs (None values let the SDK read its env vars), with an HTTP
        client that reports 429s (:attr:`http_client`)."""
        options: dict[str, Any] = {"api_key": self.spec.resolved_api_key(), "base_url": self.spec.base_url,
                                   "timeout": self.settings.model_timeout,
                                   "max_retries": self.settings.model_max_retries}
        if self.http_client is not None:
            options["http_client"] = self.http_client(event_hooks={"response": [self._saw_response]})
        return options


NATIVE_TOOL_TYPES = ("computer_call", "function_call", "tool_use")
"""Answer items that are a model's actions: OpenAI Responses' ``computer_call`` / ``function_call`` output items,
Anthropic's ``tool_use`` content blocks."""


def native_of(answer: dict[str, Any]) -> Any:
    """The model's own action(s) in ``answer`` (a provider's JSON answer), for the step's record: the tool calls
    (Responses ``output`` items, Anthropic ``content`` blocks), or a chat completion's message (its ``tool_calls``,
    else its text: the action text of UI-TARS and Qwen). None when the answer has none of these."""
    items = answer.get("output") if isinstance(answer.get("output"), list) else answer.get("content")
    if isinstance(items, list):
        calls = [i for i in items if isinstance(i, dict) and i.get("type") in NATIVE_TOOL_TYPES]
        return calls or None
    choices = answer.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        if isinstance(message, dict):
            return message.get("tool_calls") or message.get("content")
    return None
