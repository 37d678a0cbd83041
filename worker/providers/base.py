"""The base of every provider adapter: :class:`ModelPolicy`, one model call per step through the provider's
official SDK, with usage and cost, SDK errors as ``PolicyError`` and unusable answers as failed steps.

What else the adapters share lives beside it: ``screen`` (screenshots and the one coordinate conversion),
``actions`` (the action builder and the pieces of the action tables) and ``answers`` (``AnswerError`` and the
readers of an answer's values).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, ClassVar

from shared.models import ModelSpec
from shared.settings import Settings
from worker.computer import Observation
from worker.policy import Decision, Episode, PolicyError, StepRecord
from worker.providers.actions import ActionBuilder
from worker.providers.answers import AnswerError
from worker.providers.screen import Frame, Screen


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

    def __init__(self, spec: ModelSpec, episode: Episode, settings: Settings, client: Any = None):
        self.spec = spec
        self.settings = settings
        self.kind = episode.kind
        self.screen = Screen(spec)
        self.builder = ActionBuilder(self.screen, episode.kind)
        self.keep_screenshots = max(1, settings.model_screenshots_kept)
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
        try:
            answer = self._send(request)
        except AnswerError as exc:
            return Decision([], error=f"{self.provider}: unusable answer: {exc}")
        except self.sdk_error as exc:
            raise PolicyError(describe_api_error(self.provider, exc)) from exc
        usage = self._usage(answer)
        try:
            decision = self._parse(answer, episode)
        except AnswerError as exc:
            decision = Decision([], error=f"{self.provider}: unusable answer: {exc}")
        return replace(decision, usage=usage)

    def _usage(self, answer: dict[str, Any]) -> dict[str, Any]:
        try:
            tin, tout = self._tokens(answer)
        except (TypeError, ValueError, AttributeError):
            tin, tout = 0, 0
        return {"input_tokens": tin, "output_tokens": tout, "total_tokens": tin + tout, "calls": 1,
                "cost_usd": self.spec.cost_usd(tin, tout)}

    def _client_options(self) -> dict[str, Any]:
        """Constructor options common to the three SDKs (None values let the SDK read its env vars)."""
        return {"api_key": self.spec.resolved_api_key(), "base_url": self.spec.base_url,
                "timeout": self.settings.model_timeout, "max_retries": self.settings.model_max_retries}
