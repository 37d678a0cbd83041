"""A real worker and API on the S3 artifact store (moto_server): screenshots go to the bucket, not to Redis, and come
back through the API; when the store fails, a step is not recorded, the task fails with exit code 5 naming S3, and
the screenshot route answers 503."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
import redis as redis_lib
import requests

from lodestar.stack import S3Server
from tests.conftest import LiveStack, Site, start_stack

pytestmark = [pytest.mark.worker, pytest.mark.browser, pytest.mark.redis]


@pytest.fixture
def s3_stack(redis_base: str, site: Site, s3_server: S3Server) -> Iterator[tuple[LiveStack, str]]:
    bucket = f"lodestar-e2e-{uuid.uuid4().hex[:10]}"
    s3_server.create_bucket(bucket)
    stack, live = start_stack(f"{redis_base}/13", site, concurrency=1,
                              extra_env={**s3_server.env(), "LODESTAR_ARTIFACTS_URL": f"s3://{bucket}/e2e"})
    yield live, bucket
    stack.stop()


def test_screenshots_go_to_s3_and_a_failing_store_fails_the_task(s3_stack: tuple[LiveStack, str], site: Site,
                                                                   s3_server: S3Server) -> None:
    live, bucket = s3_stack
    http = live.http()
    script = f'goto {site.url("counter.html")}\nclick "Add one"\ndone "ok"'
    task_id = http.post(f"{live.base_url}/agent/tasks", json={"agent_type": "scripted", "instruction": script},
                        timeout=30).json()["task_id"]
    task = live.wait_ended(task_id)
    # Then every step's screenshot is an object of the bucket, none is in Redis, and the API serves them
    assert task["status"] == "completed" and task["steps_taken"] == 3, task
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint(), region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
    assert keys == [f"e2e/{task_id}/screenshots/{step}.jpg" for step in (1, 2, 3)]
    assert not list(redis_lib.Redis.from_url(live.redis_url).scan_iter(match="*:shots"))
    shot = http.get(f"{live.base_url}/agent/tasks/{task_id}/screenshots/2", timeout=30)
    assert shot.status_code == 200 and shot.headers["Content-Type"] == "image/jpeg" and shot.content[:2] == b"\xff\xd8"
    # the task's URL is the API's (signed, so it opens without a key), whichever store holds the bytes
    signed = task["last_screenshot_url"]
    assert signed.split("?")[0].endswith(f"/agent/tasks/{task_id}/screenshots/3") and "sig=" in signed
    unauthenticated = requests.get(signed, timeout=30)
    assert unauthenticated.status_code == 200 and unauthenticated.content[:2] == b"\xff\xd8"

    # When the bucket goes away
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    s3.delete_bucket(Bucket=bucket)
    failing = http.post(f"{live.base_url}/agent/tasks", json={"agent_type": "scripted", "instruction": script},
                        timeout=30).json()["task_id"]
    # Then a task fails with exit code 5 naming the store, having recorded no step; reads answer 503
    failed = live.wait_ended(failing)
    assert (failed["status"], failed["exit_code"], failed["steps_taken"]) == ("failed", 5, 0), failed
    assert "S3 put" in failed["error"] and bucket in failed["error"]
    broken = http.get(f"{live.base_url}/agent/tasks/{task_id}/screenshots/2", timeout=30)
    assert broken.status_code == 503 and broken.json()["error"]["type"] == "artifacts_unavailable"
