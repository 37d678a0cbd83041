"""The artifact store (``shared/artifacts.py``, ``shared/store/artifacts.py``) on both backends: Redis, and a real S3
endpoint (``moto_server``); a step's record and screenshot through ``TaskStore.record_step``; the screenshot route
and ``screenshot_mode: base64`` events served from S3."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator

import boto3
import pytest
import requests
from flask.testing import FlaskClient

from api import create_app
from shared.artifacts import (
    LIFECYCLE_RULE_ID,
    ArtifactError,
    S3Artifacts,
    lifecycle_days,
    parse_s3_url,
    screenshot_name,
)
from shared.settings import Settings
from shared.states import ExitCode, Status
from shared.store import LeaseLost, TaskStore
from tests.conftest import KEY, make_task

pytestmark = pytest.mark.redis

AUTH = {"Authorization": f"Bearer {KEY}"}
JPEG = b"\xff\xd8\xff\xe0fake jpeg" + bytes(range(256)) * 4


@pytest.fixture(params=["redis", "s3"])
def any_store(request: pytest.FixtureRequest, settings: Settings) -> Iterator[TaskStore]:
    """A TaskStore whose artifacts live in Redis, or in a fresh bucket of the S3 server."""
    url = request.getfixturevalue("s3_url") if request.param == "s3" else ""
    store = TaskStore.from_settings(dataclasses.replace(settings, artifacts_url=url))
    assert store.artifacts.backend == request.param
    yield store
    store.close()


@pytest.fixture
def s3_store(settings: Settings, s3_url: str) -> Iterator[TaskStore]:
    store = TaskStore.from_settings(dataclasses.replace(settings, artifacts_url=s3_url))
    yield store
    store.close()


def bucket_keys(store: TaskStore) -> list[str]:
    artifacts = store.artifacts
    assert isinstance(artifacts, S3Artifacts)
    page = artifacts.client.list_objects_v2(Bucket=artifacts.bucket)
    return sorted(o["Key"] for o in page.get("Contents", []))


# --- the interface, on both backends --------------------------------------------------------------------------------
def test_put_get_and_delete_named_artifacts(any_store: TaskStore) -> None:
    # Given a task with a screenshot and two other named artifacts of other types
    artifacts, task_id = any_store.artifacts, make_task(any_store)
    artifacts.put(task_id, screenshot_name(1), JPEG, "image/jpeg")
    artifacts.put(task_id, "recordings/run.webm", b"webm bytes", "video/webm")
    artifacts.put(task_id, "env/state.bin", b"\x00\x01", "application/x-lodestar-env")
    # Then each reads back with its bytes and content type; a name never written reads None
    assert (artifacts.get(task_id, "screenshots/1.jpg").data, artifacts.get(task_id, "screenshots/1.jpg").content_type
            ) == (JPEG, "image/jpeg")  # type: ignore[union-attr]
    assert artifacts.get(task_id, "recordings/run.webm").content_type == "video/webm"  # type: ignore[union-attr]
    env = artifacts.get(task_id, "env/state.bin")
    assert env is not None and (env.data, env.content_type) == (b"\x00\x01", "application/x-lodestar-env")
    assert artifacts.get(task_id, "screenshots/2.jpg") is None
    assert any_store.get_screenshot(task_id, 1) == JPEG and any_store.get_screenshot(task_id, 2) is None
    # And another task's artifacts are apart; delete_task removes this task's only
    other = make_task(any_store)
    artifacts.put(other, screenshot_name(1), b"other", "image/jpeg")
    assert artifacts.delete_task(task_id) == 3
    assert artifacts.get(task_id, screenshot_name(1)) is None and artifacts.delete_task(task_id) == 0
    assert artifacts.get(other, screenshot_name(1)).data == b"other"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["", "/abs.jpg", "../up.jpg", "a/../b", ".hidden", "a//b", "sp ace", "x" * 201])
def test_names_that_are_not_relative_paths_are_refused(any_store: TaskStore, name: str) -> None:
    with pytest.raises(ValueError):
        any_store.artifacts.put("task_x", name, b"x", "image/jpeg")
    with pytest.raises(ValueError):
        any_store.artifacts.get("task_x", name)


def test_a_step_is_recorded_with_its_screenshot_and_a_refused_step_is_not(any_store: TaskStore) -> None:
    # Given a task held by worker w1
    task_id = make_task(any_store, Status.RUNNING, holder="w1")
    event = {"type": "step", "task_id": task_id, "step": 1, "screenshot": {"step": 1}}
    # When w1 records step 1
    result = any_store.record_step(task_id, 1, JPEG, {"steps_taken": 1}, event, holder="w1")
    # Then the record and the event name step 1 and its screenshot reads back
    assert result.ok and any_store.get(task_id).steps_taken == 1  # type: ignore[union-attr]
    assert any_store.read_events(task_id)[-1][1]["screenshot"] == {"step": 1}
    assert any_store.get_screenshot(task_id, 1) == JPEG
    # And a worker that lost the lease records nothing of its step in the record
    with pytest.raises(LeaseLost):
        any_store.record_step(task_id, 2, JPEG, {"steps_taken": 2}, {**event, "step": 2}, holder="w2")
    assert any_store.get(task_id).steps_taken == 1  # type: ignore[union-attr]


# --- Redis: today's layout and TTLs ----------------------------------------------------------------------------------
def test_redis_artifacts_keep_the_task_hash_and_its_ttls(store: TaskStore, settings: Settings) -> None:
    # Given a running task's step screenshot and an artifact of a type its name does not imply
    task_id = make_task(store, Status.RUNNING, holder="w1")
    store.record_step(task_id, 1, JPEG, {"steps_taken": 1}, {"type": "step"}, holder="w1")
    store.artifacts.put(task_id, "notes/a.bin", b"n", "text/x-notes")
    # Then they live in the task's shots hash (a screenshot under its step number), for screenshot_ttl
    shots = store.keys.shots(task_id)
    assert store.redis.hget(shots, "1") == JPEG and store.redis.hget(shots, "notes/a.bin|type") == b"text/x-notes"
    assert 0 < store.redis.ttl(shots) <= settings.screenshot_ttl
    # And once the task ends they are kept for the task's retention, like its record
    assert store.finish(task_id, ExitCode.COMPLETED, holder="w1").ok
    assert settings.screenshot_ttl < store.redis.ttl(shots) <= settings.task_retention
    # And an artifact added after the end does not shorten that
    store.artifacts.put(task_id, "late.txt", b"late", "text/plain")
    assert settings.screenshot_ttl < store.redis.ttl(shots) <= settings.task_retention
    assert store.artifacts.url(task_id, screenshot_name(1), 60) is None


# --- S3 ---------------------------------------------------------------------------------------------------------------
def test_s3_keeps_nothing_of_a_screenshot_in_redis_and_names_objects_by_task(s3_store: TaskStore) -> None:
    # Given a step recorded with an S3 artifact store
    task_id = make_task(s3_store, Status.RUNNING, holder="w1")
    assert s3_store.record_step(task_id, 1, JPEG, {"steps_taken": 1}, {"type": "step"}, holder="w1").ok
    # Then Redis holds no screenshot; the bucket holds <prefix>/<task id>/screenshots/1.jpg as image/jpeg
    assert s3_store.redis.exists(s3_store.keys.shots(task_id)) == 0
    assert bucket_keys(s3_store) == [f"artifacts/{task_id}/screenshots/1.jpg"]
    artifacts = s3_store.artifacts
    assert isinstance(artifacts, S3Artifacts)
    head = artifacts.client.head_object(Bucket=artifacts.bucket, Key=f"artifacts/{task_id}/screenshots/1.jpg")
    assert head["ContentType"] == "image/jpeg"
    # And a presigned URL fetches it without credentials
    url = artifacts.url(task_id, screenshot_name(1), 60)
    assert url is not None and "Signature" in url
    assert requests.get(url, timeout=10).content == JPEG


def test_s3_writes_the_object_before_the_record(s3_store: TaskStore, s3_server: object) -> None:
    # Given an S3 store that cannot be reached
    task_id = make_task(s3_store, Status.RUNNING, holder="w1")
    broken = S3Artifacts("no-such-bucket-here", "p", timeout=2)
    s3_store.artifacts = broken
    # When a step is recorded, the store's error is raised and the record does not name the step
    with pytest.raises(ArtifactError, match="no-such-bucket-here"):
        s3_store.record_step(task_id, 1, JPEG, {"steps_taken": 1}, {"type": "step"}, holder="w1")
    assert s3_store.get(task_id).steps_taken == 0  # type: ignore[union-attr]
    assert [e["type"] for _, e in s3_store.read_events(task_id)] == ["status"]


def test_lifecycle_rule_is_added_once_and_keeps_other_rules(s3_store: TaskStore, settings: Settings) -> None:
    artifacts = s3_store.artifacts
    assert isinstance(artifacts, S3Artifacts)
    client = artifacts.client
    other = {"ID": "someone-elses", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=artifacts.bucket, LifecycleConfiguration={"Rules": [other]})
    days = lifecycle_days(settings)
    assert days == 9  # 7 days of retention + up to 7000 s of run, rounded up, + 1 (S3 counts from midnight)
    for _ in range(2):
        artifacts.apply_lifecycle(days)
    rules = client.get_bucket_lifecycle_configuration(Bucket=artifacts.bucket)["Rules"]
    assert sorted(r["ID"] for r in rules) == [LIFECYCLE_RULE_ID, "someone-elses"]
    ours = next(r for r in rules if r["ID"] == LIFECYCLE_RULE_ID)
    assert ours["Expiration"]["Days"] == 9 and ours["Filter"]["Prefix"] == "artifacts/"


@pytest.mark.parametrize("url", ["s3://", "http://bucket/p", "s3://b/p?x=1", "redis://x"])
def test_a_malformed_artifacts_url_is_refused(settings: Settings, url: str) -> None:
    with pytest.raises(ValueError, match="LODESTAR_ARTIFACTS_URL"):
        TaskStore.from_settings(dataclasses.replace(settings, artifacts_url=url))
    assert parse_s3_url("s3://b/one/two/") == ("b", "one/two") and parse_s3_url("s3://b") == ("b", "")


# --- the API serves S3 artifacts -------------------------------------------------------------------------------------
def s3_client(settings: Settings, s3_url: str, **overrides: object) -> tuple[FlaskClient, TaskStore]:
    app_settings = dataclasses.replace(settings, artifacts_url=s3_url, sse_keepalive=0.2, **overrides)
    return create_app(test_config=app_settings).test_client(), TaskStore.from_settings(app_settings)


def test_the_screenshot_route_and_base64_events_read_s3(settings: Settings, s3_url: str) -> None:
    # Given a task (base64 screenshots) that recorded a step with an S3 artifact store, and ended
    client, store = s3_client(settings, s3_url)
    resp = client.post("/agent/tasks", headers=AUTH, json={"agent_type": "scripted", "instruction": 'done "x"',
                                                            "screenshot_mode": "base64"})
    task_id = resp.get_json()["task_id"]
    assert store.claim(task_id, "w1")[0] == "started"
    event = {"type": "step", "task_id": task_id, "step": 1, "screenshot": {"step": 1}}
    assert store.record_step(task_id, 1, JPEG, {"steps_taken": 1}, event, holder="w1").ok
    assert store.finish(task_id, ExitCode.COMPLETED, holder="w1").ok
    # Then the route answers the object's bytes, and 404 for a step that has none
    shot = client.get(f"/agent/tasks/{task_id}/screenshots/1", headers=AUTH)
    assert shot.status_code == 200 and shot.mimetype == "image/jpeg" and shot.data == JPEG
    assert client.get(f"/agent/tasks/{task_id}/screenshots/2", headers=AUTH).status_code == 404
    # And the step event inlines it as a data URL
    body = client.get(f"/agent/tasks/{task_id}/events", headers=AUTH).get_data()
    steps = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    step = next(e for e in steps if e["type"] == "step")
    assert step["screenshot"] == "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()


def test_redirect_mode_answers_a_presigned_url_and_a_broken_store_is_a_503(settings: Settings, s3_url: str) -> None:
    client, store = s3_client(settings, s3_url, artifacts_redirect=True)
    task_id = client.post("/agent/tasks", headers=AUTH, json={"agent_type": "scripted", "instruction": 'done "x"'}
                          ).get_json()["task_id"]
    store.put_screenshot(task_id, 1, JPEG)
    resp = client.get(f"/agent/tasks/{task_id}/screenshots/1", headers=AUTH)
    assert resp.status_code == 302 and requests.get(resp.headers["Location"], timeout=10).content == JPEG
    # a store that fails answers 503 with retry-after, in the API's error shape
    plain, _ = s3_client(settings, s3_url.replace("s3://", "s3://missing-"))
    broken = plain.get(f"/agent/tasks/{task_id}/screenshots/1", headers=AUTH)
    assert broken.status_code == 503 and broken.headers["retry-after"] == "1"
    assert broken.get_json()["error"]["type"] == "artifacts_unavailable"


def test_objects_are_written_with_boto3_settings_from_the_environment(s3_store: TaskStore, s3_url: str) -> None:
    # the store's client found the endpoint through AWS_ENDPOINT_URL, like any boto3 program
    task_id = make_task(s3_store)
    s3_store.put_screenshot(task_id, 7, JPEG)
    bucket, prefix = parse_s3_url(s3_url)
    got = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/{task_id}/screenshots/7.jpg")
    assert got["Body"].read() == JPEG


# --- lodestar artifacts ---------------------------------------------------------------------------------------------
def test_the_cli_prints_and_applies_the_lifecycle_rule_and_deletes_a_task_s_artifacts(
        s3_store: TaskStore, s3_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from lodestar.cli import main

    monkeypatch.setenv("LODESTAR_ARTIFACTS_URL", s3_url)
    monkeypatch.setenv("LODESTAR_REDIS_URL", settings.redis_url)
    assert main(["artifacts", "lifecycle"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["applied"] is False and printed["rule"]["Expiration"] == {"Days": 9}
    artifacts = s3_store.artifacts
    assert isinstance(artifacts, S3Artifacts)
    assert main(["artifacts", "lifecycle", "--apply"]) == 0 and json.loads(capsys.readouterr().out)["applied"]
    rules = artifacts.client.get_bucket_lifecycle_configuration(Bucket=artifacts.bucket)["Rules"]
    assert [r["ID"] for r in rules] == [LIFECYCLE_RULE_ID]
    task_id = make_task(s3_store)
    s3_store.put_screenshot(task_id, 1, JPEG)
    assert main(["artifacts", "delete", task_id]) == 0
    assert "1 artifacts deleted" in capsys.readouterr().out and s3_store.get_screenshot(task_id, 1) is None
    monkeypatch.setenv("LODESTAR_ARTIFACTS_URL", "")
    assert main(["artifacts", "lifecycle"]) == 2
