"""Signed screenshot URLs in a real browser (issue 12): a page's ``<img src>`` loads a task's screenshot with no
key; a tampered, an expired and another tenant's URL are refused with 403. Playwright's own Chromium against the
live stack (API under gunicorn, a real worker that took the screenshot)."""

from __future__ import annotations

import html
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from shared.settings import load_settings
from shared.signing import UrlSigner, screenshot_resource
from shared.store import TaskStore
from tests.conftest import LiveStack, Site, chromium_available, need

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    need(chromium_available(), "Chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=load_settings().chromium_path or None, headless=True, args=ARGS)
        yield browser.new_page()
        browser.close()


def finished_task(live: LiveStack, site: Site, key: str) -> dict[str, Any]:
    """A scripted task of ``key``'s tenant that opened a page and completed (one screenshot per step)."""
    resp = live.http(key).post(f"{live.base_url}/agent/tasks", timeout=30, json={
        "instruction": f'goto {site.url("counter.html")}\ndone "seen"', "agent_type": "scripted"})
    assert resp.status_code == 200, resp.text
    task = live.wait_ended(resp.json()["task_id"], key=key)
    assert task["status"] == "completed" and task["last_screenshot_url"], task
    return task


def image_width(page: Any, url: str) -> int:
    """Load ``url`` in an ``<img>`` of a blank page (no key, no cookies) and return its naturalWidth (0: refused)."""
    page.set_content(f'<img id="shot" src="{html.escape(url)}">')
    page.wait_for_function("() => { const i = document.getElementById('shot'); return i.complete; }", timeout=30_000)
    return int(page.eval_on_selector("#shot", "i => i.naturalWidth"))


def with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = {**dict(urllib.parse.parse_qsl(parts.query)), **changes}
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def test_a_signed_screenshot_url_loads_in_an_img_without_the_key(page: Any, live: LiveStack, site: Site) -> None:
    # Given a finished task's signed last_screenshot_url
    task = finished_task(live, site, live.key)
    url = task["last_screenshot_url"]
    assert "sig=" in url and "expires=" in url
    # When a page shows it in an <img> (the browser sends no Authorization header)
    # Then the image loads
    assert image_width(page, url) > 0
    # And a tampered signature is refused: the <img> stays empty, and the browser is answered 403
    tampered = with_query(url, sig="A" * 43)
    assert image_width(page, tampered) == 0
    assert page.goto(tampered).status == 403


def test_an_expired_signed_url_is_refused(page: Any, live: LiveStack, site: Site) -> None:
    # Given a URL signed with the deployment's own key for this task and step, but with an expiry just past
    task = finished_task(live, site, live.key)
    store = TaskStore.from_settings(load_settings(redis_url=live.redis_url))
    try:
        signer = UrlSigner.from_settings(store.settings, store)
        tenant = store.get(task["task_id"]).tenant  # type: ignore[union-attr]
        step = task["steps_taken"]
        fresh = signer.query(tenant, screenshot_resource(task["task_id"], step), expires=int(time.time()) + 600)
        expired = signer.query(tenant, screenshot_resource(task["task_id"], step), expires=int(time.time()) - 1)
    finally:
        store.close()
    base = f"{live.base_url}/agent/tasks/{task['task_id']}/screenshots/{step}"
    # Then the same URL with a future expiry loads (the key is the deployment's), and the expired one is a 403
    assert image_width(page, f"{base}?{fresh}") > 0
    assert page.goto(f"{base}?{expired}").status == 403
    assert image_width(page, f"{base}?{expired}") == 0


def test_another_tenants_task_id_with_this_signature_is_refused(page: Any, live: LiveStack, site: Site) -> None:
    # Given a signed URL of tenant A's task, and a task of tenant B that has a screenshot at the same step
    mine = finished_task(live, site, live.key)
    theirs = finished_task(live, site, live.other_key)
    assert mine["steps_taken"] == theirs["steps_taken"]
    # When A's URL is pointed at B's task id
    forged = mine["last_screenshot_url"].replace(mine["task_id"], theirs["task_id"])
    # Then the browser is refused, though B's own signed URL loads
    assert page.goto(forged).status == 403
    assert image_width(page, theirs["last_screenshot_url"]) > 0
