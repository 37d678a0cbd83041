"""The OpenAPI document and the answers agree (issue 12): schemathesis fuzzes every operation of ``/openapi.json``
of a real API process (gunicorn, no worker) with every check (``--checks all``: no 5xx, status codes, content
types, headers and bodies as documented, valid requests accepted, invalid ones refused with a 4xx, missing
authentication refused, the Allow header, undocumented methods answered 405), once with a valid key and once
with none. Any finding fails the test, with schemathesis' report in the message.

Bounded: a fixed seed (the same cases every run: ``LODESTAR_FUZZ_SEED`` to explore others), ``--max-examples`` per
operation, and limits lowered in the API's settings (the document follows them: a batch of at most 20 tasks, a
wait of at most 1 s), so a run takes a minute or two on 2 cores. Hand-made hostile bodies (too large, too deep,
not UTF-8, another content type) are in ``test_limits.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.server import ApiProcess, api_process

pytestmark = pytest.mark.redis

SEED = int(os.environ.get("LODESTAR_FUZZ_SEED", "20261128"))
MAX_EXAMPLES = int(os.environ.get("LODESTAR_FUZZ_EXAMPLES", "25"))
SMALL_LIMITS = {
    "LODESTAR_BATCH_MAX_ITEMS": "20", "LODESTAR_WAIT_MAX_TIMEOUT": "1", "LODESTAR_LIST_MAX_LIMIT": "50",
    "LODESTAR_MAX_CONTEXT_TURNS": "5", "LODESTAR_MAX_METADATA_KEYS": "5", "LODESTAR_MAX_INSTRUCTION_CHARS": "2000",
    "LODESTAR_MAX_SYSTEM_PROMPT_CHARS": "2000", "LODESTAR_MAX_MESSAGE_CHARS": "2000",
    "LODESTAR_SSE_KEEPALIVE": "0.5", "LODESTAR_MAX_BODY_BYTES": str(1024 * 1024),
}

CONFIG = """
# Not remembered between runs: each run tests the same cases from the seed, nothing replayed from a cache.
[cache]
enabled = false

# Stateful sequences follow the links the document declares (start -> pause, resume, cancel, inject_message,
# events, wait...; batch -> batch_summary), not links guessed from names: a guessed one leads to the WebSocket
# endpoint with a real task id, where only a WebSocket client can be valid (see events_ws below).
[phases.stateful.inference]
algorithms = []

# Rejections schemathesis does not list by default: 413, how the API refuses a batch over its maxItems
# ("batch_too_large"), and 414, how the HTTP server refuses a request line over 4094 bytes (both documented).
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429"]

# A batch accepts its valid items and reports each invalid one in `errors` of a 200 (the operation's description;
# 422 only when no item is valid): an invalid item is refused on its own, not with the whole request. So a batch
# of schema-valid items is a 422 too when each was refused for what no schema can say (an environment_id that names
# no environment: the 404 a single start answers is that item's error).
[[operations]]
include-operation-id = "start_batch"
checks.negative_data_rejection.expected-statuses = ["200", "400", "401", "413", "414", "422", "429"]
# An item valid by the document can still name, in replay_of, a task the caller does not have (no document can
# say which ids exist): it is reported in `errors`, and the batch is a 422 when no item is left.
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]

# The event streams of a task that never ends (no worker here) are read to their first event: enough to check
# the status, the content type and each event against the document.
[[operations]]
include-operation-id = "start_stream"
max-stream-events = 1
request-timeout = 5

[[operations]]
include-operation-id = "events"
max-stream-events = 1
request-timeout = 5

# A WebSocket endpoint: a plain HTTP request, however valid its parameters, is answered 426 Upgrade Required
# (documented), the one answer it can give an HTTP client; the handshake itself is tested with a WebSocket
# client in tests/e2e/test_e2e.py.
[[operations]]
include-operation-id = "events_ws"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "426", "429"]
"""


LAUNCHER = """
import hypothesis.internal.lambda_sources as sources
# CPython before 3.11.8 (gh-106905): ast.parse fails with "SystemError: AST constructor recursion depth mismatch"
# when another thread changes the recursion limit meanwhile, as Hypothesis does around each test while
# schemathesis runs two workers. Hypothesis parses source only to describe a lambda in a strategy's repr: on that
# error the description is left generic, nothing drawn changes.
_describe = sources.lambda_description
def describe(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <source not parsed>"
sources.lambda_description = describe
from schemathesis.cli import schemathesis
schemathesis()
"""


@pytest.fixture(scope="module")
def api(redis_base: str) -> Iterator[ApiProcess]:
    with api_process(redis_base, extra_env=SMALL_LIMITS) as process:
        yield process


def schemathesis(api: ApiProcess, workdir: Path, *options: str, timeout: float = 600) -> tuple[int, str]:
    """Run ``st run`` against the API's document; returns (exit code, its report)."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [sys.executable, "-c", LAUNCHER,
            "--config-file", str(config), "run", f"{api.base_url}/openapi.json", "--checks", "all",
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
            "--workers", "2", "--no-color", "--request-timeout", "10", *options]
    done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    report = done.stdout + done.stderr
    (workdir / "report.txt").write_text(report)
    if os.environ.get("LODESTAR_FUZZ_REPORTS"):
        Path(os.environ["LODESTAR_FUZZ_REPORTS"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["LODESTAR_FUZZ_REPORTS"]) / f"{workdir.name}.txt").write_text(report)
    return done.returncode, report


def summary(report: str) -> str:
    """The part of schemathesis' report worth reading in a failure: errors, failures and the summary."""
    marks = [i for i in (report.find("= ERRORS ="), report.find("= FAILURES =")) if i != -1]
    return report[min(marks) if marks else 0:][-30000:]


def operations(api: ApiProcess) -> int:
    spec = requests.get(f"{api.base_url}/openapi.json", timeout=30).json()
    return len([op for item in spec["paths"].values() for op in item.values()])


def test_the_document_is_what_the_fuzzer_reads(api: ApiProcess) -> None:
    spec = requests.get(f"{api.base_url}/openapi.json", timeout=30).json()
    assert operations(api) == 29 and spec["openapi"].startswith("3.1")
    # the document follows the deployment's settings
    batch = spec["paths"]["/agent/tasks/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["anyOf"][0]["maxItems"] == 20


@pytest.mark.parametrize("key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_contradiction_with_the_document(api: ApiProcess, tmp_path: Path, key: bool) -> None:
    # Given the API's own document, when schemathesis runs every phase and check against every operation
    auth = ["-H", f"Authorization: Bearer {api.key}"] if key else []
    code, report = schemathesis(api, tmp_path, *auth)
    # Then it tested every operation (but /openapi.json, the document itself) and found nothing: no 5xx, no
    # answer the document does not allow
    count = operations(api) - 1
    assert f"{count} selected / {count} total" in report, report[-3000:]
    assert code == 0, textwrap.shorten(report[:200], 200) + "\n" + summary(report)
    assert re.search(r"\d+ generated, \d+ passed", report), report[-3000:]


HOSTILE = {
    "too-large": (b'{"instruction": "' + b"x" * (1024 * 1024) + b'"}', "application/json"),
    "too-deep": (b"[" * 50_000 + b"]" * 50_000, "application/json"),
    "not-utf8": (b'{"instruction": "caf\xe9", "message": "\xff"}', "application/json"),
    "not-finite": (b'{"instruction": "x", "temperature": NaN, "message": "x", "task_ids": [], "x": 1e999}',
                   "application/json"),
    "xml": (b"<task><instruction>hi</instruction></task>", "application/xml"),
    "multipart": (b'--b\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nhi\r\n--b--',
                  "multipart/form-data; boundary=b"),
}


@pytest.mark.parametrize("body", list(HOSTILE))
def test_hostile_bodies_are_a_4xx_on_every_operation(api: ApiProcess, body: str) -> None:
    # Given every operation of the document, with a task id that does not exist (nothing to stream or wait for)
    spec = requests.get(f"{api.base_url}/openapi.json", timeout=30).json()
    raw, content_type = HOSTILE[body]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            url = api.base_url + path.replace("{id}", "task_nope").replace("{step}", "1")
            # When it is sent a hostile body
            resp = requests.request(method, url, data=raw, timeout=60, headers={
                "Authorization": f"Bearer {api.key}", "Content-Type": content_type})
            # Then it is never a 5xx; an operation that reads a body (or any, for a body over the limit) refuses it
            # with a documented 4xx
            label = f"{method.upper()} {path}"
            assert resp.status_code < 500, (label, resp.status_code, resp.text[:300])
            if body == "too-large" or "requestBody" in op:
                assert 400 <= resp.status_code < 500, (label, resp.status_code)
                assert str(resp.status_code) in op["responses"], (label, resp.status_code)
