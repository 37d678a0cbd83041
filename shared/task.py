"""The task record: one frozen type for a task, its defaults, and its conversions (request, Redis, JSON).

(Filled in by the structure change; the constants below are the single source of the names and defaults.)
"""

from __future__ import annotations

OFFLINE_AGENTS = ("scripted", "heuristic")
"""``agent_type`` values that run with no model provider (``worker/agents.py`` registers one policy for each)."""

KINDS = ("browser", "desktop")
"""Kinds of environment a task may ask for; each is a Celery queue of its own."""

DEFAULT_TEMPERATURE = 0.2
"""Sampling temperature when the request gives none (Lightcone's documented default)."""
