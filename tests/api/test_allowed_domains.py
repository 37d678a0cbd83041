"""``allowed_domains`` at the API and in the store: documented in the OpenAPI document, validated at submit (422
naming the field, also per item of a batch), stored normalized on the task record and shown by GET; a tenant's own
list is set, validated and shown through the store's tenant settings (``lodestar keys limits --allowed-domains``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app
from shared.settings import Settings
from shared.store import TaskStore
from shared.tenants import env_tenant
from tests.conftest import KEY

pytestmark = pytest.mark.redis

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(test_config=dataclasses.replace(settings, max_allowed_domains=3)).test_client()


def post(client: FlaskClient, **body: Any) -> Any:
    return client.post("/agent/tasks", json={"instruction": 'done "ok"', "agent_type": "scripted", **body},
                       headers=AUTH)


def test_the_openapi_document_describes_the_field(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    start = schemas["TaskStart"]["properties"]["allowed_domains"]
    assert start["type"] == "array" and start["items"]["type"] == "string" and start["maxItems"] == 3
    assert "*.example.org" in start["description"]
    assert schemas["Task"]["properties"]["allowed_domains"]["type"] == "array"


def test_patterns_are_stored_normalized_and_shown(client: FlaskClient) -> None:
    resp = post(client, allowed_domains=["Example.COM.", "*.Example.org", "xn--bcher-kva.de"])
    assert resp.status_code == 200, resp.get_data(as_text=True)
    task = client.get(f"/agent/tasks/{resp.get_json()['task_id']}", headers=AUTH).get_json()
    assert task["allowed_domains"] == ["example.com", "*.example.org", "xn--bcher-kva.de"]
    plain = client.get(f"/agent/tasks/{post(client).get_json()['task_id']}", headers=AUTH).get_json()
    assert plain["allowed_domains"] == []


@pytest.mark.parametrize("value", [["https://a.com"], ["a.com:443"], ["*"], [], ["a.com", None], "a.com",
                                   ["a.com", "b.com", "c.com", "d.com"], [""]])
def test_a_bad_list_is_a_422_naming_the_field(client: FlaskClient, value: Any) -> None:
    resp = post(client, allowed_domains=value)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert list(resp.get_json()["error"]["fields"]) == ["allowed_domains"]


def test_a_batch_refuses_only_the_item_with_a_bad_pattern(client: FlaskClient) -> None:
    items = [{"instruction": "done", "agent_type": "scripted", "allowed_domains": ["a.com"]},
             {"instruction": "done", "agent_type": "scripted", "allowed_domains": ["a.*.com"]}]
    body = client.post("/agent/tasks/batch", json=items, headers=AUTH).get_json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["errors"][0]["index"] == 1 and "allowed_domains" in body["errors"][0]["error"]["message"]


def test_a_tenants_list_is_set_validated_shown_and_removed(store: TaskStore, client: FlaskClient) -> None:
    tenants = store.tenants
    tenant = env_tenant(KEY)
    tenants.set_limits(tenant, allowed_domains="Site-A.test, *.b.test")
    assert tenants.tenant(tenant)["allowed_domains"] == ["site-a.test", "*.b.test"]
    assert client.get("/agent/tenant", headers=AUTH).get_json()["allowed_domains"] == ["site-a.test", "*.b.test"]
    with pytest.raises(ValueError, match="'a b'"):
        tenants.set_limits(tenant, allowed_domains=["ok.test", "a b"])
    tenants.set_limits(tenant, allowed_domains="")
    assert tenants.tenant(tenant)["allowed_domains"] == []
    _, principal = tenants.create_key("k", allowed_domains=["x.test"])
    assert tenants.tenant(principal.tenant)["allowed_domains"] == ["x.test"]
