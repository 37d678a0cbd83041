"""Signed, expiring URLs (shared/signing.py): the signature covers tenant, resource and expiry; expiries are
rounded up to the minute; the generated key is one per deployment, kept in Redis."""

from __future__ import annotations

import dataclasses

import pytest

from shared.settings import Settings
from shared.signing import EXPIRY_ROUNDING, UrlSigner, check_settings, screenshot_resource
from shared.store import TaskStore
from shared.task import Task

KEY = b"k" * 32


def signer(now: float = 1_000_000.0, ttl: int = 3600) -> UrlSigner:
    return UrlSigner(KEY, ttl, clock=lambda: now)


def parts(query: str) -> tuple[str, str]:
    expires, sig = (p.split("=", 1)[1] for p in query.split("&"))
    return expires, sig


def test_a_signed_url_opens_its_resource_until_it_expires() -> None:
    s = signer(now=1_000_000.0)
    expires, sig = parts(s.query("t_a", "screenshot:task_1:3"))
    # the expiry is at least ttl away, rounded up to the minute (a stable URL for browsers' caches)
    assert int(expires) % EXPIRY_ROUNDING == 0 and 1_003_600 <= int(expires) < 1_003_600 + EXPIRY_ROUNDING
    assert len(sig) == 43
    assert s.refusal("t_a", "screenshot:task_1:3", expires, sig) is None
    later = signer(now=int(expires) - 1)
    assert later.refusal("t_a", "screenshot:task_1:3", expires, sig) is None
    expired = signer(now=int(expires) + 1).refusal("t_a", "screenshot:task_1:3", expires, sig)
    assert expired is not None and "expired" in expired


@pytest.mark.parametrize(("tenant", "resource", "expires_delta", "sig_change"), [
    ("t_b", "screenshot:task_1:3", 0, False),  # another tenant
    ("t_a", "screenshot:task_2:3", 0, False),  # another task
    ("t_a", "screenshot:task_1:4", 0, False),  # another step
    ("t_a", "screenshot:task_1:3", 60, False),  # a later expiry
    ("t_a", "screenshot:task_1:3", 0, True),  # a changed signature
], ids=["tenant", "task", "step", "expiry", "signature"])
def test_a_signature_covers_tenant_resource_and_expiry(tenant: str, resource: str, expires_delta: int,
                                                        sig_change: bool) -> None:
    s = signer()
    expires, sig = parts(s.query("t_a", "screenshot:task_1:3"))
    if sig_change:
        sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    reason = s.refusal(tenant, resource, str(int(expires) + expires_delta), sig)
    assert reason == "invalid link signature"


@pytest.mark.parametrize(("expires", "sig"), [(None, "x" * 43), ("123", None), ("12a", "x" * 43), ("123", "x" * 42),
                                              ("123", "x" * 42 + "="), ("\u0663", "x" * 43)])
def test_a_malformed_link_is_refused(expires: str | None, sig: str | None) -> None:
    assert "malformed" in (signer().refusal("t_a", "r", expires, sig) or "")


def test_a_missing_resource_is_refused_like_a_bad_signature() -> None:
    s = signer()
    expires, sig = parts(s.query("t_a", "r"))
    assert s.refusal(None, "r", expires, sig) == "invalid link signature"


def test_screenshot_urls_are_signed_for_the_tasks_tenant() -> None:
    task = Task(task_id="task_1", tenant="t_a", instruction="x", created_at=1.0, steps_taken=2)
    url = signer().screenshot_urls("https://api.example.com/")(task, 2)
    path, _, query = url.partition("?")
    assert path == "https://api.example.com/agent/tasks/task_1/screenshots/2"
    assert signer().refusal("t_a", screenshot_resource("task_1", 2), *parts(query)) is None
    assert task.to_json(signer().screenshot_urls(""))["last_screenshot_url"].startswith(
        "/agent/tasks/task_1/screenshots/2?expires=")


def test_the_generated_key_is_one_per_deployment(settings: Settings, store: TaskStore) -> None:
    # Given no configured key, two processes' signers (two stores on one Redis)
    other = TaskStore.from_settings(settings)
    first, second = UrlSigner.from_settings(settings, store), UrlSigner.from_settings(settings, other)
    # Then they sign alike, with a key that was generated once and kept
    assert first.signature("t", "r", 60) == second.signature("t", "r", 60)
    assert store.url_signing_key() == other.url_signing_key() and len(store.url_signing_key()) == 64
    # And a configured key wins
    configured = UrlSigner.from_settings(dataclasses.replace(settings, url_signing_key="s" * 32), store)
    assert configured.signature("t", "r", 60) != first.signature("t", "r", 60)
    other.close()


@pytest.mark.parametrize(("key", "ttl", "message"), [("short", 3600, "LODESTAR_URL_SIGNING_KEY"),
                                                     ("", 0, "LODESTAR_URL_TTL")])
def test_unusable_signing_settings_are_refused(key: str, ttl: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_settings(Settings(url_signing_key=key, url_ttl=ttl))
