"""Limits on input (issue 12): a body size limit checked before the body is read (Content-Length) and while a
chunked body streams in, a JSON depth limit that never reaches a RecursionError, numbers that must be finite in
bodies and queries, strict UTF-8; each a clear 4xx naming what is wrong, never a 500, and nothing stored."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.api.server import ApiProcess, api_process
from tests.conftest import KEY

pytestmark = pytest.mark.redis

AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 16 * 1024 * 1024  # the default LODESTAR_MAX_BODY_BYTES
BODY_ROUTES = ["/agent/tasks", "/agent/tasks/stream", "/agent/tasks/batch", "/agent/tasks/cancel",
               "/agent/tasks/{id}/messages"]
"""The routes that read a JSON body."""
ALL_POSTS = [*BODY_ROUTES, "/agent/tasks/{id}/cancel", "/agent/tasks/{id}/pause"]
"""Every POST: the size limit holds even where no body is read."""


@pytest.fixture(scope="module")
def api(redis_base: str) -> Iterator[ApiProcess]:
    with api_process(redis_base) as process:
        yield process


@pytest.fixture
def task_id(api: ApiProcess) -> str:
    resp = requests.post(f"{api.base_url}/agent/tasks", json={"instruction": "wait 1", "agent_type": "scripted"},
                         headers=AUTH, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["task_id"])


def error(resp: requests.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["Content-Type"].startswith("application/json")
    return dict(resp.json()["error"])


def task_count(api: ApiProcess) -> int:
    page = requests.get(f"{api.base_url}/agent/tasks?limit=500", headers=AUTH, timeout=30).json()
    return len(page["data"])


# --- size ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("auth", [True, False], ids=["with-key", "without-key"])
def test_a_content_length_over_the_limit_is_a_413_before_the_body_is_sent(api: ApiProcess, auth: bool) -> None:
    # Given a request that announces a body one byte over the limit and sends none of it
    head = (f"POST /agent/tasks/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {LIMIT + 1}\r\n{'Authorization: Bearer ' + KEY + chr(13) + chr(10) if auth else ''}"
            "Connection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", api.port), timeout=60) as sock:
        sock.sendall(head.encode())
        # When the answer is read (a server waiting for the body would never answer: the read would time out)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    # Then it is a JSON 413 naming the limit, sent at once (even before authentication)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "request_too_large" and str(LIMIT) in body["error"]["message"]


@pytest.mark.parametrize("path", ALL_POSTS)
def test_an_oversized_body_is_a_413_on_every_post(api: ApiProcess, task_id: str, path: str) -> None:
    before = task_count(api)
    big = b'{"instruction": "' + b"x" * LIMIT + b'", "agent_type": "scripted"}'
    resp = requests.post(api.base_url + path.replace("{id}", task_id), data=big, headers=AUTH, timeout=60)
    assert error(resp, 413)["type"] == "request_too_large"
    assert task_count(api) == before


def test_a_chunked_body_past_the_limit_is_cut_off_with_a_413(api: ApiProcess) -> None:
    # Given a chunked upload (no Content-Length) of a batch three times the limit
    item = b'{"instruction": "' + b"x" * 1000 + b'", "agent_type": "scripted"},'
    count = 3 * LIMIT // len(item)

    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(count // 100):
            yield item * 100
        yield b'{"instruction": "last", "agent_type": "scripted"}]'

    before = task_count(api)
    resp = requests.post(f"{api.base_url}/agent/tasks/batch", data=chunks(), headers=AUTH, timeout=120)
    # Then the API stops reading at the limit and answers 413; nothing was stored; the next request is served
    assert error(resp, 413)["type"] == "request_too_large"
    assert task_count(api) == before


def test_a_batch_of_ten_thousand_normal_tasks_fits(api: ApiProcess) -> None:
    # Given 10 000 tasks as a user would send them: a paragraph of instruction, a start page, metadata, a context
    task = {"instruction": "Open the pricing page, compare the Pro and Team plans and report the cheaper one " * 6,
            "agent_type": "heuristic", "start_url": "https://shop.example.com/catalogue/pricing?ref=lodestar",
            "priority": "low", "metadata": {"customer": "acme-corporation", "run": "2026-11-28-nightly"},
            "context": [{"role": "user", "content": "Prices are in EUR."}]}
    body = json.dumps([{**task, "metadata": {**task["metadata"], "n": str(i)}} for i in range(10_000)]).encode()
    assert 7 * 1024 * 1024 < len(body) < LIMIT  # ~780 bytes a task
    resp = requests.post(f"{api.base_url}/agent/tasks/batch", data=body, headers=AUTH, timeout=300)
    assert resp.status_code == 200, resp.text[:300]
    assert (resp.json()["accepted"], resp.json()["rejected"]) == (10_000, 0)


# --- depth ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("shape", ["arrays", "objects", "unbalanced"])
def test_deeply_nested_json_is_a_4xx_never_a_500(api: ApiProcess, task_id: str, path: str, shape: str) -> None:
    depth = 50_000
    raw = {"arrays": b"[" * depth + b"]" * depth, "objects": b'{"a":' * depth + b"1" + b"}" * depth,
           "unbalanced": b"[" * depth}[shape]
    resp = requests.post(api.base_url + path.replace("{id}", task_id), data=raw, headers=AUTH, timeout=60)
    if shape == "unbalanced":
        assert error(resp, 400)["type"] == "invalid_json"
    else:
        err = error(resp, 422)
        assert "deeper than 32 levels" in err["message"] and err["fields"] == {"body": ["Nested deeper than 32."]}


def test_json_at_the_depth_limit_is_accepted(api: ApiProcess) -> None:
    nested: Any = "deep"
    for _ in range(30):  # + the body object and the metadata-free unknown field: 31 levels
        nested = [nested]
    resp = requests.post(f"{api.base_url}/agent/tasks", headers=AUTH, timeout=30,
                         json={"instruction": 'done "ok"', "agent_type": "scripted", "x_extra": nested})
    assert resp.status_code == 200, resp.text


# --- numbers -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_a_number_that_is_not_finite_in_a_body_is_a_422_naming_the_field(api: ApiProcess, literal: str) -> None:
    before = task_count(api)
    start = f'{{"instruction": "done", "agent_type": "scripted", "temperature": {literal}}}'.encode()
    err = error(requests.post(f"{api.base_url}/agent/tasks", data=start, headers=AUTH, timeout=30), 422)
    assert err["fields"] == {"temperature": ["Not a finite number."]}
    # in a batch the path names the item
    batch = f'[{{"instruction": "a", "agent_type": "scripted"}}, {{"instruction": "b", "max_steps": {literal}}}]'
    err = error(requests.post(f"{api.base_url}/agent/tasks/batch", data=batch.encode(), headers=AUTH, timeout=30),
                422)
    assert err["fields"] == {"1.max_steps": ["Not a finite number."]}
    # and in an ignored field too: nothing that is not finite enters
    unknown = f'{{"instruction": "done", "agent_type": "scripted", "extra": [{literal}]}}'.encode()
    assert error(requests.post(f"{api.base_url}/agent/tasks", data=unknown, headers=AUTH, timeout=30),
                 422)["fields"] == {"extra.0": ["Not a finite number."]}
    assert task_count(api) == before


@pytest.mark.parametrize(("path", "name"), [
    ("/agent/tasks?limit={v}", "limit"), ("/agent/tasks?created_after={v}", "created_after"),
    ("/agent/tasks?created_before={v}", "created_before"), ("/agent/tasks/{id}/wait?timeout={v}", "timeout"),
    ("/agent/tasks/{id}/events?after={v}", "after"),
])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999"])
def test_a_query_number_that_is_not_finite_is_a_422_naming_it(api: ApiProcess, task_id: str, path: str, name: str,
                                                              value: str) -> None:
    resp = requests.get(api.base_url + path.format(v=value, id=task_id), headers=AUTH, timeout=30)
    assert list(error(resp, 422)["fields"]) == [name]


@pytest.mark.parametrize("value", ["\u00b2", "\uff11\uff12", "\u0663", "9" * 4000, "+5", " 5", "5 ", "1_0", "0x10"])
def test_a_limit_that_is_not_plain_digits_is_a_422(api: ApiProcess, value: str) -> None:
    # (superscript two, fullwidth digits and an Arabic-Indic digit pass str.isdigit, and int() fails on the first)
    resp = requests.get(f"{api.base_url}/agent/tasks", params={"limit": value}, headers=AUTH, timeout=30)
    assert list(error(resp, 422)["fields"]) == ["limit"]


def test_a_last_event_id_that_is_not_finite_is_a_422(api: ApiProcess, task_id: str) -> None:
    for value in ("inf", "nan", "1e3", "9" * 5000):
        resp = requests.get(f"{api.base_url}/agent/tasks/{task_id}/events", timeout=30,
                            headers={**AUTH, "Last-Event-ID": value})
        assert list(error(resp, 422)["fields"]) == ["Last-Event-ID"], value


# --- encodings and content types -----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b'{"instruction": "caf\xe9", "agent_type": "scripted"}',  # Latin-1, not UTF-8
                                 b'{"instruction": "\xed\xa0\x80", "agent_type": "scripted"}',  # a UTF-8 surrogate
                                 b"\xff\xfe{\x00}\x00", b"\xc3"],
                         ids=["latin-1", "encoded-surrogate", "utf-16", "truncated"])
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_that_is_not_utf8_is_a_400(api: ApiProcess, task_id: str, raw: bytes, path: str) -> None:
    before = task_count(api)
    resp = requests.post(api.base_url + path.replace("{id}", task_id), data=raw, headers=AUTH, timeout=30)
    assert error(resp, 400)["type"] == "invalid_json"
    assert task_count(api) == before


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud83d x"])
def test_an_unpaired_surrogate_escape_is_a_422_naming_the_field(api: ApiProcess, escape: str) -> None:
    raw = f'{{"instruction": "hi {escape}", "agent_type": "scripted"}}'.encode()
    err = error(requests.post(f"{api.base_url}/agent/tasks", data=raw, headers=AUTH, timeout=30), 422)
    assert err["fields"] == {"instruction": ["Not valid Unicode."]}
    paired = b'{"instruction": "done \\"\\ud83d\\ude00\\"", "agent_type": "scripted"}'
    assert requests.post(f"{api.base_url}/agent/tasks", data=paired, headers=AUTH, timeout=30).status_code == 200


@pytest.mark.parametrize(("content_type", "raw"), [
    ("multipart/form-data; boundary=x",
     b'--x\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nhi\r\n--x--'),
    ("application/x-www-form-urlencoded", b"instruction=hi&agent_type=scripted"),
    ("application/xml", b"<task><instruction>hi</instruction></task>"),
    ("text/plain", b"hello"),
    ("image/jpeg", b"\xff\xd8\xff\xe0"),
])
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_of_another_content_type_is_a_4xx(api: ApiProcess, task_id: str, content_type: str, raw: bytes,
                                                 path: str) -> None:
    before = task_count(api)
    resp = requests.post(api.base_url + path.replace("{id}", task_id), data=raw, timeout=30,
                         headers={**AUTH, "Content-Type": content_type})
    assert 400 <= resp.status_code < 500 and resp.status_code not in (401, 404), resp.text
    assert task_count(api) == before


def test_json_under_another_content_type_is_read_as_json(api: ApiProcess) -> None:
    # curl -d sends application/x-www-form-urlencoded: the README's example must keep working
    resp = requests.post(f"{api.base_url}/agent/tasks", data=b'{"instruction": "done", "agent_type": "scripted"}',
                         headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert resp.status_code == 200, resp.text
