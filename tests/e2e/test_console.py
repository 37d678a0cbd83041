"""The web console in a real browser (issue 14): Playwright's own API drives headless Chromium against the live
stack (the API under gunicorn, a real Celery worker whose Chromium runs the tasks). Sign in with the key; start a
scripted task from the form; watch the screenshot and the step log follow its steps; Pause; take over with a click
on the live screenshot that presses a button of the task's page (the page reports it, and the agent's next
``expect`` finds the text it shows); Resume, and the task completes; replay it; share it read-only, and the link
stops working once expired; another tenant cannot reach the task.

Every page is screenshotted into ``tests-output/console/`` (printed, for reviewers; gitignored).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.settings import load_settings
from tests.conftest import LiveStack, Site, chromium_available, need

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
OUT = Path(__file__).resolve().parents[2] / "tests-output" / "console"
LONG = 90_000
"""ms any one expectation may wait: generous, for a loaded 2-core machine (a bound, not a pace)."""
BUTTON = (250, 160)
"""The middle of takeover.html's "Press me" button, in the task's viewport pixels."""


def script(site: Site) -> str:
    """A task that stays long enough to be paused (30 short waits), then needs the button pressed."""
    waits = "\n".join(["wait 0.5"] * 30)
    return f'goto {site.url("takeover.html")}\n{waits}\nexpect "Pressed by a human"\ndone "the human pressed it"'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need(chromium_available(), "Chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=load_settings().chromium_path or None, headless=True, args=ARGS)
        yield chromium
        chromium.close()


def new_page(browser: Any, width: int = 1280, height: int = 1000) -> Any:
    """A page in a fresh context: no session storage, no cookies (a new visitor)."""
    return browser.new_context(viewport={"width": width, "height": height}).new_page()


def snap(page: Any, name: str) -> Path:
    """Screenshot the whole page into :data:`OUT` and print where."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"console screenshot: {path}")
    return path


def sign_in(page: Any, live: LiveStack, key: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live.base_url}/console")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible(timeout=LONG)
    assert key not in page.url  # the key is never in a URL


def pressed(site: Site) -> bool:
    return any("pressed" in hit for hit in site.hits)


def test_watch_pause_take_over_resume_replay_share(browser: Any, live: LiveStack, site: Site) -> None:
    from playwright.sync_api import expect

    page = new_page(browser)
    # Given a user signed in with their key
    sign_in(page, live, live.key)
    assert page.evaluate("() => sessionStorage.getItem('lodestar.key')") == live.key

    # When they start a scripted task from the form
    page.get_by_label("Instruction").fill(script(site))
    page.get_by_label("Agent").select_option("scripted")
    page.get_by_role("button", name="Start").click()
    started = page.locator("#started-link")
    expect(started).to_be_visible(timeout=LONG)
    task_id = started.inner_text()
    expect(page.locator(f'#task-rows tr[data-task-id="{task_id}"]')).to_be_visible(timeout=LONG)
    expect(page.locator('#counts li[data-status="running"] strong')).not_to_have_text("0", timeout=LONG)
    snap(page, "tasks-page")

    # Then its page shows the screenshot and the step log as the steps arrive
    started.click()
    expect(page.locator("#status")).to_have_text(re.compile("running|queued"), timeout=LONG)
    expect(page.locator('#step-log li[data-step="2"]')).to_be_visible(timeout=LONG)
    shot = page.locator("#screenshot")
    expect(shot).to_have_attribute("src", re.compile(rf"/agent/tasks/{task_id}/screenshots/\d+\?expires="))
    first_src = shot.get_attribute("src")
    expect(page.locator('#step-log li[data-step="4"]')).to_be_visible(timeout=LONG)
    expect(shot).not_to_have_attribute("src", first_src or "", timeout=LONG)  # the screenshot followed
    expect(page.locator('#step-log li[data-step="1"]')).to_contain_text("navigate")

    # When they pause it, the status says paused and the takeover tools appear
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#status")).to_have_text("paused", timeout=LONG)
    expect(page.locator("#takeover-form")).to_be_visible(timeout=LONG)
    assert not pressed(site)

    # And click the task page's button on the live screenshot (a human takeover)
    expect(shot).to_be_visible(timeout=LONG)
    # (read in one go: the image may be swapped for the next screenshot between two reads, its size 0 meanwhile)
    natural_w, natural_h = page.wait_for_function(
        "() => { const i = document.getElementById('screenshot'); "
        "return i.naturalWidth > 0 && i.naturalHeight > 0 && [i.naturalWidth, i.naturalHeight]; }",
        timeout=LONG).json_value()
    box = shot.bounding_box()
    shot.click(position={"x": BUTTON[0] * box["width"] / natural_w, "y": BUTTON[1] * box["height"] / natural_h})

    # Then the click ran in the task's own browser: the page reported it, and the log shows a human step
    expect(page.locator("#takeover-result")).to_contain_text("done", timeout=LONG)
    deadline = time.monotonic() + 30
    while not pressed(site):
        assert time.monotonic() < deadline, "the task's page never reported the press"
        time.sleep(0.1)
    human = page.locator("#step-log li.human")
    expect(human).to_have_count(1, timeout=LONG)
    expect(human).to_contain_text(re.compile(r"click at \(2[45][0-9], 1[56][0-9]\)"))  # subpixel rounding
    expect(page.locator("#status")).to_have_text("paused")
    snap(page, "task-page-takeover")

    # When they resume, the agent finds what the click did (its expect) and the task completes
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#status")).to_have_text("completed", timeout=LONG * 2)
    expect(page.locator("#result")).to_contain_text("the human pressed it", timeout=LONG)
    snap(page, "task-page-completed")

    # And the finished task replays step by step
    replay = page.locator("#replay")
    replay.fill("0")
    expect(page.locator("#replay-position")).to_contain_text("Step 1 (1 of")
    expect(page.locator('#step-log li[data-step="1"]')).to_have_class(re.compile("current"))
    snap(page, "task-page-replay")

    # When they share it, the link opens read-only for someone without a key
    page.get_by_role("button", name="Share link").click()
    link = page.locator("#share-link")
    expect(link).to_have_attribute("href", re.compile(rf"/console/tasks/{task_id}\?expires=\d+&sig="), timeout=LONG)
    visitor = new_page(browser, 390, 844)  # a phone
    visitor.goto(link.get_attribute("href"))
    expect(visitor.locator("#status")).to_have_text("completed", timeout=LONG)
    expect(visitor.locator("#read-only")).to_be_visible()
    expect(visitor.locator('#step-log li[data-step="1"]')).to_be_visible(timeout=LONG)
    for control in ("Pause", "Resume", "Cancel", "Share link"):
        expect(visitor.get_by_role("button", name=control)).to_have_count(0)
    assert visitor.evaluate("() => sessionStorage.getItem('lodestar.key')") is None
    snap(visitor, "task-page-shared-phone")


def test_a_short_share_link_fails_after_expiry(browser: Any, live: LiveStack, site: Site) -> None:
    from playwright.sync_api import expect

    # Given a finished task shared for 3 seconds
    http = live.http()
    task_id = http.post(f"{live.base_url}/agent/tasks", timeout=30, json={
        "instruction": f'goto {site.url("counter.html")}\ndone "seen"', "agent_type": "scripted"}).json()["task_id"]
    live.wait_ended(task_id)
    url = http.post(f"{live.base_url}/agent/tasks/{task_id}/share", json={"expires_in": 3}, timeout=30).json()["url"]
    visitor = new_page(browser)
    # Then it opens at first (a fresh visitor, no key)
    assert visitor.goto(url).status == 200
    expect(visitor.locator("#status")).to_have_text("completed", timeout=LONG)
    # and once it has expired the page answers 403 and says so (polled: expiry is a wall-clock second)
    deadline = time.monotonic() + 60
    while (response := visitor.goto(url)).status == 200:
        assert time.monotonic() < deadline, "the share link never expired"
        time.sleep(0.25)
    assert response.status == 403
    expect(visitor.locator("#error-message")).to_contain_text("expired")
    snap(visitor, "share-link-expired")


def test_another_tenant_cannot_reach_the_task(browser: Any, live: LiveStack, site: Site) -> None:
    from playwright.sync_api import expect

    # Given a task of tenant A
    task_id = live.http().post(f"{live.base_url}/agent/tasks", timeout=30, json={
        "instruction": 'done "mine"', "agent_type": "scripted"}).json()["task_id"]
    # When tenant B signs in and opens its page
    page = new_page(browser)
    sign_in(page, live, live.other_key)
    expect(page.locator(f'#task-rows tr[data-task-id="{task_id}"]')).to_have_count(0)
    page.goto(f"{live.base_url}/console/tasks/{task_id}")
    # Then the page says there is no such task, and shows nothing of it
    expect(page.locator("#task-error")).to_contain_text("No such task", timeout=LONG)
    expect(page.locator("#step-log li")).to_have_count(0)
    assert page.locator("#instruction").inner_text() == ""
    snap(page, "other-tenant")
    # And without a key the page asks for one
    stranger = new_page(browser)
    stranger.goto(f"{live.base_url}/console/tasks/{task_id}")
    expect(stranger.get_by_label("API key")).to_be_visible(timeout=LONG)


def test_filters_batch_progress_and_bulk_cancel(browser: Any, live: LiveStack, site: Site) -> None:
    from playwright.sync_api import expect

    # Given a batch of two long tasks tagged with metadata, and another task outside it
    http = live.http()
    long_script = f'goto {site.url("counter.html")}\n' + "\n".join(["wait 1"] * 120)
    batch = http.post(f"{live.base_url}/agent/tasks/batch", timeout=30, json=[
        {"instruction": long_script, "agent_type": "scripted", "metadata": {"run": "console-bulk"}}
        for _ in range(2)]).json()
    ids = [row["task_id"] for row in batch["tasks"]]
    outside = http.post(f"{live.base_url}/agent/tasks", timeout=30, json={
        "instruction": 'done "outside"', "agent_type": "scripted"}).json()["task_id"]
    page = new_page(browser)
    sign_in(page, live, live.key)
    # When the user filters by the batch and its metadata
    page.get_by_label("Batch", exact=True).fill(batch["batch_id"])
    page.get_by_label("Metadata (key=value)").fill("run=console-bulk")
    page.get_by_role("button", name="Apply filters").click()
    # Then only the batch's tasks are listed, with the batch's progress bar
    for task_id in ids:
        expect(page.locator(f'#task-rows tr[data-task-id="{task_id}"]')).to_be_visible(timeout=LONG)
    expect(page.locator(f'#task-rows tr[data-task-id="{outside}"]')).to_have_count(0)
    expect(page.locator("#batches")).to_contain_text(f"Batch {batch['batch_id']}: 0 of 2 ended", timeout=LONG)
    snap(page, "tasks-page-filtered")
    # When they cancel the filtered tasks (and confirm)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel the filtered tasks").click()
    # Then both are cancelled, the other task is not, and the progress bar shows the batch ended
    expect(page.locator("#list-message")).to_have_text("Cancelled 2 task(s).", timeout=LONG)
    for task_id in ids:
        assert live.wait_ended(task_id)["status"] == "cancelled"
    assert live.wait_ended(outside)["status"] == "completed"
    expect(page.locator("#batches")).to_contain_text("2 of 2 ended", timeout=LONG)
