"""``lodestar flower`` is behind authentication by default: it refuses to start open, except ``--unauthenticated``
on a loopback address; with ``--basic-auth`` a real Flower answers 401 without credentials and 200 with them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from lodestar.cli import main
from lodestar.stack import free_port

FLOWER_ENV = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")


@pytest.fixture(autouse=True)
def no_flower_auth_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FLOWER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv", [[], ["--address", "0.0.0.0"], ["--port", "5599"]], ids=["default", "public", "port"])
def test_flower_refuses_to_start_without_authentication(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["flower", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to start Flower without authentication" in err and "--basic-auth" in err


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "example.com", ""])
def test_unauthenticated_flower_is_refused_off_loopback(capsys: pytest.CaptureFixture[str], address: str) -> None:
    assert main(["flower", "--unauthenticated", "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only on a loopback address" in err


@pytest.mark.parametrize("credential", ["admin", "admin:", ":secret", "admin:secret,guest"])
def test_a_malformed_basic_auth_is_refused(capsys: pytest.CaptureFixture[str], credential: str) -> None:
    assert main(["flower", "--basic-auth", credential]) == 2
    assert "user:password" in capsys.readouterr().err


def test_flower_auth_may_come_from_flowers_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lodestar.cli import build_parser, flower_argv

    args = build_parser().parse_args(["flower", "--", "--url_prefix=flower"])
    assert flower_argv(args, {"FLOWER_BASIC_AUTH": "ops:pw"})[-1] == "--url_prefix=flower"
    assert flower_argv(args, {"FLOWER_AUTH": r".*@example\.com"})[:1] == ["flower"]
    loopback = build_parser().parse_args(["flower", "--unauthenticated", "--address", "::1"])
    assert flower_argv(loopback, {})[:3] == ["flower", "--port=5555", "--address=::1"]


@pytest.mark.redis
def test_flower_with_basic_auth_answers_401_without_credentials_and_200_with_them(redis_url: str) -> None:
    # Given Flower started by `lodestar flower` with basic auth on a free port
    port = free_port()
    env = {**os.environ, "LODESTAR_REDIS_URL": redis_url}
    for name in FLOWER_ENV:
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "flower", f"--port={port}",
                             "--basic-auth=ops:s3cret"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "Flower exited during start-up"
            with contextlib.suppress(requests.ConnectionError):
                requests.get(base, timeout=5)
                break
            assert time.monotonic() < deadline, "Flower did not answer within 60 s"
            time.sleep(0.2)
        # When the dashboard and the API are asked without credentials, with wrong ones, and with the right ones
        # (Flower leaves /metrics and /healthcheck open by design, for Prometheus: README says so)
        for path in ("/", "/api/workers", "/tasks"):
            assert requests.get(base + path, timeout=10).status_code == 401, path
            assert requests.get(base + path, auth=("ops", "wrong"), timeout=10).status_code == 401, path
        # Then only the right credentials get in
        assert requests.get(base + "/", auth=("ops", "s3cret"), timeout=10).status_code == 200
        assert requests.get(base + "/api/workers", auth=("ops", "s3cret"), timeout=30).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

