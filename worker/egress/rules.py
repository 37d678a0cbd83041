"""What the egress proxy lets through: the deployment's network rules (:class:`EgressPolicy`, one per worker process)
and a task's own rules (:class:`EgressRules`, switched when the task's environment opens).

A request is let through when, in this order: a task is running (a gate with no rules refuses everything); the host
matches the task's ``allowed_domains`` and its tenant's (each list that is set); the name resolves; and one of its
addresses is globally routable, or listed in ``LODESTAR_BROWSER_ALLOWED_HOSTS`` (by name or by address, with or
without the port), or ``LODESTAR_ALLOW_PRIVATE_NETWORKS`` is set. The proxy then connects to that address itself, so
what was checked is what is reached (no second DNS answer, no rebinding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.netguard import (
    IPAddress,
    address_refusal,
    domain_allowed,
    ip_literal,
    normalize_host,
    parse_hosts,
    resolve,
)
from shared.settings import Settings
from shared.states import Status
from shared.store import TaskStore, now
from shared.task import Task

log = logging.getLogger(__name__)

Resolver = Callable[[str], list[IPAddress]]
"""A normalized host name -> its addresses ([] when it does not resolve)."""

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


@dataclass(frozen=True)
class EgressRules:
    """A task's rules, in force on a gate from the moment its environment opens.

    ``task_id``: whom blocked requests are reported for (None: nobody; the bench and tests). ``allowed_domains`` and
    ``tenant_domains``: cleaned patterns (``shared.netguard.clean_domain_patterns``); a host must match each list
    that is not empty. ``on_block(event)`` is called once per refused host and port with a ``blocked`` event
    (``{"type": "blocked", "url", "host", "port", "method", "reason"}``); it must not raise.
    """

    task_id: str | None = None
    allowed_domains: tuple[str, ...] = ()
    tenant_domains: tuple[str, ...] = ()
    on_block: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False, repr=False)


def rules_for(store: TaskStore, task: Task) -> EgressRules:
    """The rules of ``task``: its ``allowed_domains``, its tenant's (read now, so a change by the operator applies to
    tasks already queued), and blocked events appended to its event log through ``store`` while it runs or is paused
    (never after its ``end`` event).

    Raises:
        redis.RedisError: Redis is unreachable.
    """
    tenant_domains = store.tenants.tenant(task.tenant).get("allowed_domains") or []
    task_id = task.task_id

    def on_block(event: dict[str, Any]) -> None:
        try:
            store.apply(task_id, allowed_from=(Status.RUNNING, Status.PAUSED),
                        event={"task_id": task_id, "ts": now(), **event})
        except Exception as exc:  # a lost event must not break the proxy thread; the step result still names it
            log.warning("could not record a blocked event of %s: %s", task_id, exc)

    return EgressRules(task_id, tuple(task.allowed_domains), tuple(tenant_domains), on_block)


@dataclass(frozen=True)
class Verdict:
    """Where to connect (``address``), or why not (``reason``)."""

    address: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Refusal:
    """One refused request: ``url`` as the client asked for it ("host:port" for a CONNECT tunnel), ``host`` as it
    was written, ``reason`` naming the host. ``seq`` numbers the refusals of a gate from 1."""

    seq: int
    method: str
    url: str
    host: str
    port: int
    reason: str

    def event(self) -> dict[str, Any]:
        """The ``blocked`` event of this refusal."""
        return {"type": "blocked", "url": self.url, "host": self.host, "port": self.port, "method": self.method,
                "reason": self.reason}

    def describe(self) -> str:
        """``<url>: <reason>``, for step results and errors."""
        return f"{self.url}: {self.reason}"

    def matches(self, url: str) -> bool:
        """Whether ``url`` is on this refusal's host and port."""
        parts = urlsplit(url)
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return False
        return (normalize_host(parts.hostname or ""), port) == (normalize_host(self.host), self.port)


class EgressPolicy:
    """The deployment's rules, the same for every task of a worker process: ``allow_private``
    (``LODESTAR_ALLOW_PRIVATE_NETWORKS``), ``allowed_hosts`` (``LODESTAR_BROWSER_ALLOWED_HOSTS``: "host",
    "host:port", "[v6]:port") and the resolver (the ``LODESTAR_EGRESS_HOSTS`` map, then DNS; tests pass their own).
    """

    def __init__(self, allow_private: bool = False, allowed_hosts: Iterable[str] = (),
                 resolver: Resolver | None = None, hosts: Mapping[str, Sequence[IPAddress]] | None = None):
        self.allow_private = allow_private
        self._listed: set[tuple[str, int | None]] = {_host_port(entry) for entry in allowed_hosts}
        self._resolve: Resolver = resolver or (lambda name: resolve(name, hosts))

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver | None = None) -> EgressPolicy:
        """The policy of ``settings``.

        Raises:
            ValueError: a malformed ``LODESTAR_EGRESS_HOSTS`` entry (named).
        """
        return cls(settings.allow_private_networks, settings.browser_allowed_hosts, resolver,
                   parse_hosts(settings.egress_hosts))

    def listed(self, host: str, port: int) -> bool:
        """Whether ``LODESTAR_BROWSER_ALLOWED_HOSTS`` lists ``host`` (a name or an address) on any port or on
        ``port``."""
        name = normalize_host(host)
        literal = ip_literal(name)
        if literal is not None:
            name = str(literal)
        return (name, None) in self._listed or (name, port) in self._listed

    def decide(self, host: str, port: int | None, rules: EgressRules) -> Verdict:
        """Whether a request to ``host``:``port`` may go out under ``rules``, and to which address.

        Resolves ``host`` once; the verdict's address is the first one that passes, and the one to connect to.
        """
        name = normalize_host(host)
        if not name:
            return Verdict(reason="the request names no host")
        if port is None or not 0 < port < 65536:
            return Verdict(reason=f"bad port {port!r} for host {host!r}")
        for whose, patterns in (("the task's", rules.allowed_domains), ("its tenant's", rules.tenant_domains)):
            if not domain_allowed(name, patterns):
                return Verdict(reason=f"host {host!r} is not in {whose} allowed_domains")
        addresses = self._resolve(name)
        if not addresses:
            return Verdict(reason=f"host {host!r} does not resolve")
        if self.allow_private or self.listed(name, port):
            return Verdict(address=str(addresses[0]))
        refused = ""
        for address in addresses:
            why = address_refusal(address)
            if why is None or self.listed(str(address), port):
                return Verdict(address=str(address))
            refused = refused or f"{address}: {why}"
        return Verdict(reason=f"host {host!r} is a private address ({refused}; set LODESTAR_BROWSER_ALLOWED_HOSTS)")


def _host_port(entry: str) -> tuple[str, int | None]:
    """An allowed-hosts entry as (normalized host or address, port or None)."""
    entry = entry.strip().lower()
    if entry.count(":") > 1 and not entry.startswith("["):  # a bare IPv6 address
        literal = ip_literal(entry)
        return (str(literal) if literal is not None else entry), None
    try:
        parts = urlsplit("//" + entry)
        host, port = parts.hostname or entry, parts.port
    except ValueError:
        host, port = entry, None
    literal = ip_literal(host)
    return (str(literal) if literal is not None else normalize_host(host)), port
