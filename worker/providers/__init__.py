"""Model providers behind the ``Policy`` protocol: one adapter per provider, each on the provider's official SDK.

=============  ================================================  ===================================================
provider       adapter                                           model names (``shared/models.py``)
=============  ================================================  ===================================================
northstar      :class:`~.northstar.NorthstarPolicy`              ``tzafon.*`` (Lightcone Responses API, ``tzafon``)
openai         :class:`~.openai_cua.OpenAIComputerPolicy`        ``openai/computer-use-preview``, ``openai/<model>``
anthropic      :class:`~.anthropic_cua.AnthropicComputerPolicy`  ``anthropic/claude-*`` (Messages API)
openai-compat  :class:`~.ui_tars.UITarsPolicy`,                  ``openai-compat/<served name>`` (chat completions,
               :class:`~.qwen.QwenPolicy`                        ``openai_compat``; UI-TARS or Qwen-VL dialect)
=============  ================================================  ===================================================

Every adapter maps its provider's actions onto ``worker.computer.Action`` (tables in each module's docstring),
converts coordinates in ``screen.Screen.to_viewport`` only, reports usage and cost per step, turns an SDK error after
its retries into ``PolicyError`` (exit code 7) and an unusable answer into a failed step (``Decision.error``).
"""

from __future__ import annotations

from typing import Any

from shared.models import ModelSpec, resolve_model
from shared.settings import Settings
from worker.policy import Episode, Meter, PolicyError
from worker.providers.anthropic_cua import AnthropicComputerPolicy
from worker.providers.base import ModelPolicy
from worker.providers.northstar import NorthstarPolicy
from worker.providers.openai_cua import OpenAIComputerPolicy
from worker.providers.qwen import QwenPolicy
from worker.providers.ui_tars import UITarsPolicy

__all__ = ["ADAPTERS", "AnthropicComputerPolicy", "ModelPolicy", "NorthstarPolicy", "OpenAIComputerPolicy",
           "QwenPolicy", "UITarsPolicy", "adapter_for", "make_model_policy"]

ADAPTERS: dict[str, type[ModelPolicy]] = {
    "northstar": NorthstarPolicy,
    "openai": OpenAIComputerPolicy,
    "anthropic": AnthropicComputerPolicy,
    "openai-compat/ui-tars": UITarsPolicy,
    "openai-compat/qwen": QwenPolicy,
}
"""Adapter classes by provider (openai-compat: by dialect)."""


def adapter_for(spec: ModelSpec) -> type[ModelPolicy]:
    """The adapter class serving ``spec``."""
    key = f"{spec.provider}/{spec.dialect}" if spec.provider == "openai-compat" else spec.provider
    return ADAPTERS[key]


def make_model_policy(episode: Episode, settings: Settings, client: Any = None,
                      meter: Meter | None = None) -> ModelPolicy:
    """The adapter for ``episode.model``, its SDK client built from the registry entry (or ``client``, for tests),
    reporting its calls to ``meter`` (budgets, shared rate limits, usage as it happens; none: ``NoMeter``).

    Raises:
        PolicyError: no registry entry serves the model, the registry settings are malformed, or the SDK client
            cannot be built (e.g. no API key: the SDK's message is kept).
    """
    try:
        spec = resolve_model(episode.model, settings)
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    if spec is None:
        raise PolicyError(f"no model provider serves model {episode.model!r} on this worker (see LODESTAR_MODELS)")
    cls = adapter_for(spec)
    try:
        return cls(spec, episode, settings, client=client, meter=meter)
    except cls.sdk_error as exc:
        raise PolicyError(f"{spec.provider}: cannot set up the {spec.model} client: {exc}") from exc
