"""``GET /metrics`` (issue 13): the fleet-wide figures kept in Redis by the store's own writes, read by any API
process; on a real Redis through Flask's test client (the figures during a real batch: tests/e2e/test_metrics.py)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from lodestar.stack import free_port
from shared import logs
from shared.settings import Settings
from shared.states import ExitCode
from shared.store import TaskStore
from shared.store.metrics import SEP, webhook_outcome
from tests.api.test_routes import AUTH, api_settings
from tests.conftest import app_state

pytestmark = pytest.mark.redis


def scrape(client: FlaskClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape (asserting it answered 200 in Prometheus' format)."""
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(test_config=api_settings(settings))


def start(client: FlaskClient, **body: object) -> str:
    resp = client.post("/agent/tasks", json={"instruction": 'done "ok"', "agent_type": "scripted", **body},
                       headers=AUTH)
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["task_id"])


def test_metrics_count_every_transition_of_the_fleet(app: Flask) -> None:
    client = app.test_client()
    store: TaskStore = app_state(app).store
    # Given tasks submitted at each priority and kind, one claimed and completed, one claimed and failed, one
    # cancelled while queued, one requeued by the reaper, and a model call recorded
    done, failed, cancelled, lost = (start(client) for _ in range(4))
    high = start(client, priority="high")
    start(client, priority="low", kind="desktop")
    tenant = store.get(done).tenant  # type: ignore[union-attr]
    for task_id in (done, failed, lost):
        assert store.claim(task_id, "w1")[0] == "started"
    assert store.finish(done, ExitCode.COMPLETED, result="ok", holder="w1").ok
    assert store.finish(failed, ExitCode.FAILED, error="no", holder="w1").ok
    assert client.post(f"/agent/tasks/{cancelled}/cancel", headers=AUTH).status_code == 200
    store.redis.delete(store.keys.lease(lost))  # its worker was lost
    assert store.recovery.requeue(lost, "lost", "its worker was lost").outcome == "requeued"
    store.claim(high, "w2")
    store.budgets.spend(high, {"input_tokens": 100, "output_tokens": 7, "calls": 1, "cost_usd": 0.25}, "w2")
    store.record_webhook_attempt(done, {"ok": True})
    store.record_webhook_attempt(done, {"ok": False, "error": "refused: a private address"})
    # When Prometheus scrapes /metrics (no key needed)
    got = scrape(client)
    # Then the counters say what happened, by kind, priority, tenant and status
    base = (("kind", "browser"), ("priority", "normal"), ("tenant", tenant))
    assert got[("lodestar_tasks_submitted_total", base)] == 4
    assert got[("lodestar_tasks_submitted_total", (("kind", "desktop"), ("priority", "low"), ("tenant", tenant)))] == 1
    assert got[("lodestar_tasks_started_total", base)] == 3
    for status in ("completed", "failed", "cancelled"):
        assert got[("lodestar_tasks_ended_total", (*base[:2], ("status", status), base[2]))] == 1
    assert got[("lodestar_requeues_total", (("mode", "lost"), ("outcome", "requeued")))] == 1
    model = (("model", store.get(high).model), ("tenant", tenant))  # type: ignore[union-attr]
    assert got[("lodestar_model_calls_total", model)] == 1
    assert got[("lodestar_model_tokens_total", (("direction", "input"), *model))] == 100
    assert got[("lodestar_model_tokens_total", (("direction", "output"), *model))] == 7
    assert got[("lodestar_model_cost_usd_total", model)] == 0.25
    assert got[("lodestar_webhook_deliveries_total", (("outcome", "delivered"),))] == 1
    assert got[("lodestar_webhook_deliveries_total", (("outcome", "refused"),))] == 1
    # and the gauges what is there now: the queues by kind and priority, the tenant's tasks by status
    assert got[("lodestar_queue_depth", (("priority", "normal"), ("queue", "browser")))] == 1  # the requeued one
    assert got[("lodestar_queue_depth", (("priority", "high"), ("queue", "browser")))] == 0
    assert got[("lodestar_queue_depth", (("priority", "low"), ("queue", "desktop")))] == 1
    assert got[("lodestar_tasks", (("status", "queued"), ("tenant", tenant)))] == 2
    assert got[("lodestar_tasks", (("status", "running"), ("tenant", tenant)))] == 1
    assert got[("lodestar_leases", ())] == 1
    # and no label names a task
    text = client.get("/metrics").get_data(as_text=True)
    assert not any(task_id in text for task_id in (done, failed, cancelled, lost, high))


def test_every_api_process_answers_the_same_figures(settings: Settings) -> None:
    # Given two API apps (two processes of two replicas) on one Redis, and a task submitted through the first
    first, second = (create_app(test_config=api_settings(settings)) for _ in range(2))
    start(first.test_client())
    # Then both count it
    assert scrape(first.test_client()) == scrape(second.test_client())


def test_the_metrics_token_is_required_when_set(settings: Settings) -> None:
    client = create_app(test_config=api_settings(settings, metrics_token="s3cret-metrics")).test_client()
    for headers in ({}, AUTH, {"Authorization": "Bearer wrong"}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 401 and resp.get_json()["error"]["type"] == "unauthorized"
    assert scrape(client, Authorization="Bearer s3cret-metrics")


def test_metrics_is_503_when_redis_is_down(settings: Settings) -> None:
    down = create_app(test_config=api_settings(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    resp = down.test_client().get("/metrics")
    assert resp.status_code == 503 and resp.headers["retry-after"]


def test_metrics_is_in_the_openapi_document_as_the_deployment_serves_it(settings: Settings) -> None:
    for token in ("", "s3cret-metrics"):
        client = create_app(test_config=api_settings(settings, metrics_token=token)).test_client()
        op = client.get("/openapi.json").get_json()["paths"]["/metrics"]["get"]
        assert "text/plain" in op["responses"]["200"]["content"]
        assert (op["security"], "401" in op["responses"]) == (([{"metricsToken": []}], True) if token else ([], False))


def test_unknown_or_malformed_counter_fields_are_skipped(app: Flask) -> None:
    store: TaskStore = app_state(app).store
    store.redis.hset(store.keys.metrics, mapping={"nonsense": 1, SEP.join(["ended", "browser"]): 3})
    assert not [k for k in scrape(app.test_client()) if k[0] == "lodestar_tasks_ended_total"]


def test_webhook_outcomes() -> None:
    assert [webhook_outcome(a) for a in ({"ok": True}, {"ok": False, "error": "refused: private"},
                                         {"ok": False, "error": "HTTP 500"})] == ["delivered", "refused", "failed"]


def test_a_bad_log_format_is_refused_naming_the_variable(settings: Settings) -> None:
    with pytest.raises(ValueError, match="LODESTAR_LOG_FORMAT"):
        create_app(test_config=api_settings(settings, log_format="xml"))


def test_json_log_lines_carry_the_request_context(app: Flask, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the JSON line format on a handler of the root logger
    handler = logging.StreamHandler()
    logs.apply("json", [handler])
    logger = logging.getLogger("lodestar.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        # When a line is logged inside a task's context, and one outside
        with logs.bound(task_id="task_x", tenant="t1", attempt=2):
            logger.info("inside")
        logger.info("outside")
        logger.info("celery", extra={"data": {"name": "lodestar.run_task", "id": "task_y"}})  # Celery's own lines
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    # Then every line has the four fields (null outside a task; worker: the process)
    assert [(x["message"], x["task_id"], x["tenant"], x["attempt"]) for x in lines] == [
        ("inside", "task_x", "t1", 2), ("outside", None, None, None), ("celery", "task_y", None, None)]
    assert all(x["worker"].endswith(f":{os.getpid()}") and x["level"] == "INFO" for x in lines)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"


def documented() -> dict[str, str]:
    """``{metric name: type}`` of the Metrics table of docs/operations.md."""
    section = DOCS.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(lodestar_\w+)` \| (\w+) \|", section, re.M))


def test_every_metric_is_documented_with_its_type(app: Flask) -> None:
    from worker.metrics import WorkerMetrics

    table = documented()
    start(app.test_client())
    text = app.test_client().get("/metrics").get_data(as_text=True)
    exported = {f.name: f.type for f in text_string_to_metric_families(text)}
    worker = {m._name: m._type for m in vars(WorkerMetrics(CollectorRegistry())).values()}  # type: ignore[attr-defined]
    names = {**{f"{n}_total" if t == "counter" else n: t for n, t in exported.items()}, **worker}
    assert table == names


def test_the_dashboard_reads_only_documented_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for panel in dashboard["panels"]
            for target in panel["targets"] for name in re.findall(r"lodestar_\w+", target["expr"])}
    assert used and used <= set(documented()), used - set(documented())
