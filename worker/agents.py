"""The policy registry: which ``Policy`` runs a task.

An offline agent when the task names one in ``agent_type`` (``scripted``: ``worker/scripted.py``; ``heuristic``:
``worker/heuristic/``), else the model adapter serving its ``model`` (``shared/models.py`` registry,
``worker/providers/``). The protocol types live in ``worker/policy.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.settings import Settings
from shared.task import OFFLINE_AGENTS
from worker.heuristic import HeuristicPolicy
from worker.policy import Episode, Meter, Policy, PolicyError
from worker.providers import make_model_policy
from worker.scripted import ScriptedPolicy

POLICIES: dict[str, Callable[[Episode], Policy]] = {
    "scripted": lambda episode: ScriptedPolicy(episode.instruction),
    "heuristic": lambda episode: HeuristicPolicy(episode.instruction),
}
"""Offline agents by ``agent_type`` (the names the API accepts: ``shared.task.OFFLINE_AGENTS``)."""

assert tuple(POLICIES) == OFFLINE_AGENTS, "the API and the workers must offer the same offline agents"


def make_policy(agent_type: str | None, episode: Episode, settings: Settings, meter: Meter | None = None) -> Policy:
    """Build the policy for a task: the offline agent named ``agent_type``, else the provider adapter serving
    ``episode.model``, configured from ``settings`` and reporting its calls to ``meter`` (offline agents make
    none: they cost nothing).

    Raises:
        PolicyError: no offline agent is named ``agent_type`` and no provider serves the model (or its SDK
            cannot be set up, e.g. no API key), or the agent rejects the instruction (a bad script line).
    """
    factory = POLICIES.get(agent_type or "")
    if factory is not None:
        return factory(episode)
    if not agent_type:
        return make_model_policy(episode, settings, meter=meter)
    raise PolicyError(
        f"no policy for agent_type={agent_type!r} model={episode.model!r}; offline agents: {', '.join(POLICIES)}"
    )
