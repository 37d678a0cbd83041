"""Secrets stay secret: a task's ``secrets`` are typed but never recorded, a provider's API key and a tenant's webhook
secret never reach task records, events or logs. Checked after real runs by reading every Redis key and every log
line of the fleet."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from lodestar.fleet import Fleet
from lodestar.stack import free_port
from shared.secrets import SecretsError, redact, seal, substitute, unseal
from tests.conftest import SECRETS_KEY, Receiver, Site, chromium_available, need

PASSWORD = "hunter2-Zq8wX-secret-value"
PROVIDER_KEY = "sk-lodestar-provider-key-Vb71Hd"


# --- the library -----------------------------------------------------------------------------------------------------
def test_seal_substitute_and_redact() -> None:
    sealed = seal({"pw": PASSWORD}, SECRETS_KEY)
    assert PASSWORD not in json.dumps(sealed)
    assert unseal(sealed, SECRETS_KEY) == {"pw": PASSWORD}
    with pytest.raises(SecretsError, match="another LODESTAR_SECRETS_KEY"):
        unseal(sealed, "x" * 43 + "=")
    with pytest.raises(SecretsError, match="not set"):
        seal({"pw": "x"}, "")
    assert substitute("user {{ pw }} and {{other}}", {"pw": PASSWORD}) == f"user {PASSWORD} and {{{{other}}}}"
    assert redact(f"Hello {PASSWORD}!", {"pw": PASSWORD}) == "Hello {{pw}}!"


@pytest.mark.redis
def test_secrets_are_refused_without_a_key_and_with_a_bad_name(settings: Any) -> None:
    from dataclasses import replace

    from api import create_app
    from tests.conftest import KEY

    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"instruction": 'done "x"', "agent_type": "scripted", "secrets": {"pw": "v"}}
    keyless = create_app(test_config=replace(settings, secrets_key="")).test_client()
    resp = keyless.post("/agent/tasks", json=body, headers=auth)
    assert resp.status_code == 422 and "LODESTAR_SECRETS_KEY" in resp.get_json()["error"]["fields"]["secrets"][0]
    keyed = create_app(test_config=settings).test_client()
    resp = keyed.post("/agent/tasks", json={**body, "secrets": {"not a name": "v"}}, headers=auth)
    assert resp.status_code == 422 and "secrets" in resp.get_json()["error"]["fields"]
    ok = keyed.post("/agent/tasks", json=body, headers=auth)
    assert ok.status_code == 200
    shown = keyed.get(f"/agent/tasks/{ok.get_json()['task_id']}", headers=auth).get_json()
    assert not {"secrets", "sealed_secrets"} & set(shown)


# --- a real run -----------------------------------------------------------------------------------------------------
@pytest.fixture
def fleet(site: Site, receiver: Receiver, tmp_path: Path) -> Iterator[Fleet]:
    need(chromium_available(), "Chromium is not installed (apt-get install chromium)")
    allowed = f"{urllib.parse.urlsplit(site.base).netloc},{urllib.parse.urlsplit(receiver.url).netloc}"
    f = Fleet({"LODESTAR_BROWSER_ALLOWED_HOSTS": allowed, "LODESTAR_WEBHOOK_ALLOWED_HOSTS": allowed,
               "OPENAI_API_KEY": PROVIDER_KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
               "LODESTAR_MODEL_MAX_RETRIES": "0", "LODESTAR_MODEL_TIMEOUT": "5"}, log_dir=tmp_path)
    f.start(workers=1)
    yield f
    f.stop()


def _wait_ended(fleet: Fleet, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        task = fleet.http().get(f"{fleet.base_url}/agent/tasks/{task_id}", timeout=30).json()
        if task["exit_code"] is not None:
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not end")


def _everything_in_redis(fleet: Fleet, skip: tuple[bytes, ...]) -> bytes:
    """Every value of every key (but those starting with ``skip``), concatenated."""
    client = redis.Redis.from_url(fleet.redis.url)
    out = []
    for key in client.scan_iter(count=1000):
        if key.startswith(skip):
            continue
        kind = client.type(key)
        if kind == b"hash":
            out.append(json.dumps({k.decode(): v.decode(errors="replace") for k, v in client.hgetall(key).items()}))
        elif kind == b"stream":
            out += [json.dumps({k.decode(): v.decode(errors="replace") for k, v in fields.items()})
                    for _, fields in client.xrange(key)]
        elif kind == b"list":
            out += [v.decode(errors="replace") for v in client.lrange(key, 0, -1)]
        elif kind == b"zset":
            out += [v.decode(errors="replace") for v in client.zrange(key, 0, -1)]
        elif kind == b"set":
            out += [v.decode(errors="replace") for v in client.smembers(key)]
        elif kind == b"string":
            out.append((client.get(key) or b"").decode(errors="replace"))
    client.close()
    return "\n".join(out).encode()


def test_task_secrets_provider_keys_and_webhook_secrets_never_reach_records_events_or_logs(
        fleet: Fleet, site: Site, receiver: Receiver, tmp_path: Path) -> None:
    http = fleet.http()
    webhook_secret = http.get(f"{fleet.base_url}/agent/tenant", timeout=30).json()["webhook_secret"]
    # Given a scripted task that types a secret into a form whose page shows it back, with a webhook
    site.hits.clear()
    script = "\n".join([f"goto {site.url('form.html')}", 'type "{{pw}}" into "Name"', 'click "Submit"',
                        'expect "Hello {{pw}}"', 'done "typed {{pw}}"'])
    typed = http.post(f"{fleet.base_url}/agent/tasks", json={
        "instruction": script, "agent_type": "scripted", "secrets": {"pw": PASSWORD},
        "webhook_url": receiver.url + "/secrets"}, timeout=30).json()["task_id"]
    # and a model task whose provider (unreachable) fails with its key in the worker's environment
    failed = http.post(f"{fleet.base_url}/agent/tasks", json={
        "instruction": "book a flight", "model": "openai/computer-use-preview", "start_url": site.url("form.html")},
        timeout=30).json()["task_id"]
    # When both end
    task = _wait_ended(fleet, typed)
    assert _wait_ended(fleet, failed)["exit_code"] == 7
    # Then the value was typed for real (the page sent it), the agent only ever saw the placeholder...
    assert (task["status"], task["result"]) == ("completed", "typed {{pw}}"), task
    assert site.wait_for_hit()["name"] == [PASSWORD]
    # ...and no value of the three appears in any Redis key (but the tenant's own settings, which hold its webhook
    # secret), in the task's JSON and events, or in any log line of the API and the worker
    events = http.get(f"{fleet.base_url}/agent/tasks/{typed}/events", timeout=60).content
    dump = _everything_in_redis(fleet, skip=(b"lodestar:tenant:",))
    logs = b"\n".join(p.read_bytes() for p in tmp_path.glob("*.log"))
    assert logs, "the fleet wrote no logs"
    for secret in (PASSWORD, PROVIDER_KEY, webhook_secret):
        for where, data in (("redis", dump), ("events", events), ("logs", logs),
                            ("task", json.dumps(task).encode())):
            assert secret.encode() not in data, f"{secret[:6]}... found in {where}"
    assert b"sealed_secrets" not in dump  # dropped by the write that ended the task
    for _ in range(300):  # the webhook went out, signed, without the secret in its body
        if receiver.for_path("/secrets"):
            break
        time.sleep(0.1)
    assert receiver.for_path("/secrets") and all(PASSWORD.encode() not in body
                                                 for _, body, _ in receiver.for_path("/secrets"))
