"""The fleet-wide Prometheus figures of ``GET /metrics`` (``api/routes/metrics.py``): a prometheus-client collector
that reads the store's counters and indexes at each scrape (``shared/store/metrics.py``), so every API process, of
any replica, answers the same figures for the whole fleet, and nothing needs prometheus-client's multiprocess mode.
The workers' per-process figures are on their own metrics port (``worker/metrics.py``). Every metric is listed in
docs/operations.md ("Metrics").
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from shared.store import TaskStore
from shared.store.metrics import COUNTERS, FleetSnapshot

FLEET_COUNTERS: dict[str, tuple[str, str]] = {
    # store counter (its labels: shared.store.metrics.COUNTERS): (Prometheus name without _total, help)
    "submitted": ("lodestar_tasks_submitted", "Tasks submitted (stored and queued)"),
    "started": ("lodestar_tasks_started", "Tasks started by a worker (claims of a queued task, each attempt)"),
    "ended": ("lodestar_tasks_ended", "Tasks that reached a terminal status"),
    "requeues": ("lodestar_requeues", "Running or paused tasks given back: mode lost (the reaper found their "
                 "lease expired), handback (their worker shut down or let a paused task go), retry (their "
                 "environment crashed); outcome requeued, released (paused, no worker) or exhausted (no attempt "
                 "left: it fails)"),
    "webhooks": ("lodestar_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, failed, refused)"),
    "model_calls": ("lodestar_model_calls", "Model calls made by tasks, as each returns"),
    "model_tokens": ("lodestar_model_tokens", "Model tokens used, by direction (input, output)"),
    "model_cost_usd": ("lodestar_model_cost_usd", "What model calls cost in USD (models with a price)"),
}


class FleetCollector(Collector):
    """Yields the fleet's figures from one :meth:`shared.store.metrics.FleetMetrics.snapshot` per scrape (two
    Redis round trips).

    Raises (from ``collect``):
        redis.RedisError: Redis is unreachable (the route answers 503).
    """

    def __init__(self, store: TaskStore):
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield from families(self._store.metrics.snapshot())


def families(snap: FleetSnapshot) -> Iterator[Metric]:
    """The Prometheus metric families of a snapshot (names and labels: docs/operations.md, "Metrics")."""
    for name, (metric, help_text) in FLEET_COUNTERS.items():
        family = CounterMetricFamily(metric, help_text, labels=list(COUNTERS[name]))
        for labels, value in sorted(snap.counters.get(name, {}).items()):
            family.add_metric(list(labels), value)
        yield family
    depth = GaugeMetricFamily("lodestar_queue_depth", "Queued tasks waiting for a worker, by queue (kind) and "
                              "priority (tasks deferred by their tenant's max_running left out)",
                              labels=["queue", "priority"])
    for (kind, priority), n in sorted(snap.queue_depth.items()):
        depth.add_metric([kind, priority], n)
    yield depth
    now = GaugeMetricFamily("lodestar_tasks", "Tasks queued, running or paused now, by tenant",
                            labels=["status", "tenant"])
    for (tenant, status), n in sorted(snap.tasks_now.items()):
        now.add_metric([status, tenant], n)
    yield now
    alive = GaugeMetricFamily("lodestar_workers_alive", "1 when a worker of the kind beat its heart within three "
                              "reaper intervals", labels=["kind"])
    for kind, up in sorted(snap.workers_alive.items()):
        alive.add_metric([kind], 1 if up else 0)
    yield alive
    yield GaugeMetricFamily("lodestar_dispatch_outbox", "Run messages due and not sent yet (the dispatch outbox)",
                            value=snap.dispatch_due)
    yield GaugeMetricFamily("lodestar_webhook_outbox", "Webhook deliveries waiting in their outbox",
                            value=snap.deliveries_due)
    yield GaugeMetricFamily("lodestar_leases", "Tasks held by a worker's lease (running or paused)",
                            value=snap.leases)


def fleet_registry(store: TaskStore) -> CollectorRegistry:
    """A registry holding only the fleet collector (no per-process figures: any API process answers the same)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store))
    return registry
