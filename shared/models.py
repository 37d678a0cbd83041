"""The model registry: which provider adapter, endpoint, key and coordinate space serve a task's ``model``.

Shared by the API (a start request naming an unknown model is refused with 422 on ``model``) and the worker
(``worker/providers`` builds the policy from the :class:`ModelSpec`), so ``worker/`` never imports ``api/``.
Wire formats: ``/work/shared/PROVIDERS.md``.

Built-in names (the prefix picks the adapter)::

    tzafon.<model>                 northstar      Lightcone Responses API, coordinates normalized 0-999
    openai/computer-use-preview*   openai         Responses API, computer_use_preview tool, screenshot pixels
    openai/<model>                 openai         Responses API, GA computer tool, screenshot pixels
    anthropic/claude-<...>         anthropic      Messages API, computer_20251124 (computer_20250124 for the models
                                                  before Opus 4.5: Sonnet/Haiku 4.5, Opus 4.1, Claude 4, 3.7)
    openai-compat/<served name>    openai-compat  chat completions (UI-TARS or Qwen-VL); needs an entry with base_url

Operators add or override entries with ``LODESTAR_MODELS`` (``Settings.models``): a JSON object, or the path of a
JSON file, mapping a model name or an ``fnmatch`` glob to an entry. Entry keys (all optional except where said):

- ``provider``: northstar | openai | anthropic | openai-compat (default: from the name's prefix).
- ``model``: the name sent upstream (default: the name without its ``provider/`` prefix; ``tzafon.*`` as is).
- ``base_url``: the endpoint (default: the SDK's env var ``LIGHTCONE_BASE_URL`` / ``OPENAI_BASE_URL`` /
  ``ANTHROPIC_BASE_URL``, then the SDK's default). Required for openai-compat.
- ``api_key`` (a literal) or ``api_key_env`` (the name of a variable holding it); default: the SDK's env var
  (``TZAFON_API_KEY`` / ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``; openai-compat falls back to "EMPTY").
- ``coordinates``: pixels (of the screenshot sent) | normalized (0-999 or 0-1000, divided by 1000) |
  smart-resize (pixels of the screenshot resized by Qwen's ``smart_resize``, factor 28).
- ``max_pixels`` / ``max_long_edge``: scale screenshots down to at most this area / longest side before sending
  (smart-resize: its ``max_pixels``); ``min_pixels``: smart-resize's lower bound.
- ``dialect`` (openai-compat): ui-tars | qwen (default: "qwen" when the name contains "qwen", else "ui-tars").
- ``tool``: openai: computer | computer_use_preview; anthropic: computer_20250124 | computer_20251124.
- ``max_tokens``: output token limit (anthropic, openai-compat).
- ``send_temperature``: whether the task's ``temperature`` is sent (default true; false for ``openai/*`` GA
  models and Anthropic, which refuse it: see :data:`BUILTIN`).
- ``rpm`` / ``tpm``: requests and tokens (input + output) per minute (``LODESTAR_PROVIDER_LIMIT_WINDOW``), shared
  by every worker through Redis. The limit belongs to the entry: an entry for one model limits that model, a glob
  entry (``"openai/*"``) one budget for every model it matches. A call that would go over waits. A provider's 429
  with ``retry-after`` holds back every worker calling a model of the same entry (built-in names without an entry:
  the same model) until it has passed.

Example (a self-hosted UI-TARS-1.5 on vLLM)::

    LODESTAR_MODELS='{"openai-compat/ui-tars-1.5-7b": {"base_url": "http://gpu1:8000/v1", "api_key": "EMPTY",
                      "coordinates": "smart-resize"}}'

Prices (``LODESTAR_MODEL_PRICES``, ``Settings.model_prices``): ``{"<name or glob>": {"input": USD, "output": USD}}``
per million tokens, or ``[input, output]``.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from shared.settings import Settings

Provider = Literal["northstar", "openai", "anthropic", "openai-compat"]
PROVIDERS: tuple[Provider, ...] = ("northstar", "openai", "anthropic", "openai-compat")
COORDINATES = ("pixels", "normalized", "smart-resize")
DIALECTS = ("ui-tars", "qwen")
TOOLS: dict[str, tuple[str, ...]] = {
    "northstar": ("computer_use",),
    "openai": ("computer", "computer_use_preview"),
    "anthropic": ("computer_20250124", "computer_20251124"),
    "openai-compat": ("",),
}

_PREFIXES: tuple[tuple[str, Provider], ...] = (
    ("tzafon.", "northstar"), ("openai-compat/", "openai-compat"), ("openai/", "openai"), ("anthropic/", "anthropic"),
)

_PROVIDER_DEFAULTS: dict[str, dict[str, Any]] = {
    "northstar": {"coordinates": "normalized", "tool": "computer_use"},
    "openai": {"coordinates": "pixels", "tool": "computer"},
    "anthropic": {"coordinates": "pixels", "tool": "computer_20250124", "max_pixels": 1_150_000,
                  "max_long_edge": 1568, "max_tokens": 4096, "send_temperature": False},
    "openai-compat": {"max_tokens": 1024},
}
"""Defaults per provider. Anthropic: its docs ask for images of at most ~1.15 megapixels and 1568 px a side, and the
API version its SDK 2.x sends (2026-10-21) refuses ``temperature`` (400), so it is not sent by default."""

BUILTIN: tuple[tuple[str, dict[str, Any]], ...] = (
    ("tzafon.*", {"provider": "northstar"}),
    ("openai/computer-use-preview*", {"provider": "openai", "tool": "computer_use_preview"}),
    ("openai/*", {"provider": "openai", "send_temperature": False}),
    *((f"anthropic/claude-{older}*", {"provider": "anthropic", "tool": "computer_20250124"})
      for older in ("sonnet-4-5", "haiku-4-5", "opus-4-1", "opus-4-0", "opus-4-2025", "sonnet-4-0", "sonnet-4-2025",
                    "3-7-sonnet")),
    ("anthropic/claude-*", {"provider": "anthropic", "tool": "computer_20251124"}),
)
"""Names known without configuration, most specific first (openai-compat needs an operator entry: a base URL).
The GA computer tool serves GPT-5-family models, which refuse a non-default ``temperature``: not sent to them."""

_ENTRY_KEYS = frozenset({"provider", "model", "base_url", "api_key", "api_key_env", "coordinates", "dialect", "tool",
                         "max_pixels", "min_pixels", "max_long_edge", "max_tokens", "send_temperature", "rpm", "tpm"})


@dataclass(frozen=True)
class ProviderLimit:
    """The rate limit a model's calls count against, shared by every worker: ``scope`` names it (the registry
    entry's key, e.g. "openai/*", or the model name when no operator entry matches); ``rpm`` / ``tpm`` are
    requests and tokens per window (None: no limit of that kind). A provider's ``retry-after`` blocks the scope."""

    provider: str
    scope: str
    rpm: int | None = None
    tpm: int | None = None

    def describe(self, which: str) -> str:
        """``which`` ("rpm", "tpm" or "retry-after") as the task's message words it: "rpm 60"."""
        value = {"rpm": self.rpm, "tpm": self.tpm}.get(which)
        return f"{which} {value}" if value is not None else which


@dataclass(frozen=True)
class ModelSpec:
    """Everything a provider adapter needs to serve one ``model`` name.

    Sizes are pixels; ``price_input`` / ``price_output`` are USD per million tokens (None: unknown).
    """

    name: str
    provider: Provider
    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    coordinates: str = "pixels"
    dialect: str | None = None
    tool: str = ""
    max_pixels: int | None = None
    min_pixels: int | None = None
    max_long_edge: int | None = None
    max_tokens: int = 4096
    send_temperature: bool = True
    price_input: float | None = None
    price_output: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    limit_scope: str = ""
    """The key of the registry entry that served this name ("" for a built-in name): see :meth:`limit`."""

    def limit(self) -> ProviderLimit:
        """The rate limit this model's calls count against (scope: its entry's key, else the model name)."""
        return ProviderLimit(self.provider, self.limit_scope or self.name, self.rpm, self.tpm)

    def resolved_api_key(self) -> str | None:
        """The literal key, else the variable named by ``api_key_env``, else None (the SDK reads its own env var)."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float | None:
        """USD for the tokens at this model's price, or None when the price is unknown."""
        if self.price_input is None or self.price_output is None:
            return None
        return round((input_tokens * self.price_input + output_tokens * self.price_output) / 1_000_000, 8)


def _prefix_provider(name: str) -> Provider | None:
    for prefix, provider in _PREFIXES:
        if name.startswith(prefix):
            return provider
    return None


def _upstream(name: str) -> str:
    for prefix, provider in _PREFIXES:
        if name.startswith(prefix) and provider != "northstar":
            return name[len(prefix):]
    return name


def _load_json_setting(raw: str, variable: str) -> dict[str, Any]:
    text = raw.strip()
    if not text:
        return {}
    if not text.startswith("{"):
        try:
            text = Path(text).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"{variable}: cannot read {raw!r}: {exc}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{variable}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{variable}: expected a JSON object of entries")
    return value


def _check_entry(key: str, entry: Any) -> dict[str, Any]:
    where = f"LODESTAR_MODELS[{key!r}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {', '.join(sorted(_ENTRY_KEYS))})")
    provider = entry.get("provider") or _prefix_provider(key)
    if provider not in PROVIDERS:
        raise ValueError(f"{where}: provider must be one of {', '.join(PROVIDERS)} (or use a known name prefix)")
    if provider == "openai-compat" and not entry.get("base_url"):
        raise ValueError(f"{where}: openai-compat entries need a base_url")
    for name, allowed in (("coordinates", COORDINATES), ("dialect", DIALECTS), ("tool", TOOLS[provider])):
        if name in entry and entry[name] not in allowed:
            raise ValueError(f"{where}: {name} must be one of {', '.join(allowed)}")
    for name in ("max_pixels", "min_pixels", "max_long_edge", "max_tokens", "rpm", "tpm"):
        if name in entry and not (isinstance(entry[name], int) and not isinstance(entry[name], bool)
                                  and entry[name] > 0):
            raise ValueError(f"{where}: {name} must be a positive integer")
    for name in ("model", "base_url", "api_key", "api_key_env"):
        if name in entry and not isinstance(entry[name], str):
            raise ValueError(f"{where}: {name} must be a string")
    if "send_temperature" in entry and not isinstance(entry["send_temperature"], bool):
        raise ValueError(f"{where}: send_temperature must be true or false")
    return {**entry, "provider": provider}


def _price(key: str, value: Any) -> tuple[float, float]:
    if isinstance(value, dict):
        value = [value.get("input"), value.get("output")]
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value)):
        return float(value[0]), float(value[1])
    raise ValueError(f"LODESTAR_MODEL_PRICES[{key!r}]: expected {{\"input\": USD, \"output\": USD}} per 1M tokens")


def _match(table: dict[str, Any], name: str) -> Any:
    """The value of ``name``'s exact key, else of the longest glob key matching it, else None."""
    key = _match_key(table, name)
    return None if key is None else table[key]


def _match_key(table: dict[str, Any], name: str) -> str | None:
    """``name`` when it is a key, else the longest glob key matching it, else None."""
    if name in table:
        return name
    for key in sorted((k for k in table if any(c in k for c in "*?[")), key=len, reverse=True):
        if fnmatch.fnmatchcase(name, key):
            return key
    return None


class ModelRegistry:
    """Resolves a task's ``model`` string to a :class:`ModelSpec` (built-ins, then operator entries on top).

    Raises (constructor):
        ValueError: ``LODESTAR_MODELS`` or ``LODESTAR_MODEL_PRICES`` is malformed; the message names the variable
            and the entry.
    """

    def __init__(self, models: str = "", prices: str = ""):
        self.entries = {k: _check_entry(k, v) for k, v in _load_json_setting(models, "LODESTAR_MODELS").items()}
        self.prices = {k: _price(k, v) for k, v in _load_json_setting(prices, "LODESTAR_MODEL_PRICES").items()}

    def resolve(self, name: str) -> ModelSpec | None:
        """The spec serving ``name``, or None when no built-in or configured entry knows it."""
        if not name:
            return None
        entry_key = _match_key(self.entries, name)
        entry = None if entry_key is None else self.entries[entry_key]
        builtin = next((b for pattern, b in BUILTIN if fnmatch.fnmatchcase(name, pattern)), None)
        if entry is None and builtin is None:
            return None
        provider: Provider = (entry or {}).get("provider") or (builtin or {})["provider"]
        merged: dict[str, Any] = {**_PROVIDER_DEFAULTS[provider]}
        if builtin is not None and builtin["provider"] == provider:
            merged.update(builtin)
        merged.update(entry or {})
        if provider == "openai-compat":
            merged.setdefault("dialect", "qwen" if "qwen" in name.lower() else "ui-tars")
            merged.setdefault("coordinates", _compat_coordinates(name.lower(), merged["dialect"]))
        price = _match(self.prices, name)
        spec = ModelSpec(name=name, provider=provider, model=merged.get("model") or _upstream(name),
                         price_input=price[0] if price else None, price_output=price[1] if price else None,
                         limit_scope=entry_key or "")
        known = {k: v for k, v in merged.items() if k in _ENTRY_KEYS and k not in ("provider", "model")}
        return replace(spec, **known)

    def known(self, name: str) -> bool:
        """True when some entry serves ``name``."""
        return self.resolve(name) is not None

    def describe(self) -> str:
        """The known names and globs, for error messages: configured entries first, then the built-in prefixes."""
        return ", ".join([*self.entries, "tzafon.*", "openai/*", "anthropic/claude-*"])


def _compat_coordinates(name: str, dialect: str) -> str:
    """UI-TARS 1.0 and Qwen3-VL answer in 0-1000; UI-TARS 1.5 and Qwen2.5-VL in smart-resized pixels."""
    if dialect == "qwen":
        return "normalized" if "qwen3" in name else "smart-resize"
    return "smart-resize" if any(v in name for v in ("1.5", "1_5", "-2")) else "normalized"


@functools.lru_cache(maxsize=8)
def _registry(models: str, prices: str) -> ModelRegistry:
    return ModelRegistry(models, prices)


def registry(settings: Settings) -> ModelRegistry:
    """The registry of ``settings``, parsed once per distinct value (a ``LODESTAR_MODELS`` file is read once per
    process). Raises ValueError like :class:`ModelRegistry`."""
    return _registry(settings.models, settings.model_prices)


def resolve_model(name: str, settings: Settings) -> ModelSpec | None:
    """Shortcut for ``registry(settings).resolve(name)``."""
    return registry(settings).resolve(name)
