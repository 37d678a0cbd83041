"""The egress filter on a real Xvfb desktop: the session's programs (curl, and the Chromium ``navigate`` starts) reach
the web through the worker's proxy, so a loopback service is refused to them too, with the refusal reported; and the
rules follow the tasks, also for a persistent session's programs between tasks."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from shared.settings import Settings, load_settings
from tests.conftest import need
from tests.listeners import EgressSite, Listener, eventually
from worker.computer import Action, execute
from worker.desktop.session import spawn
from worker.egress import EgressProxy, EgressRules

pytestmark = [pytest.mark.worker]


@pytest.fixture(scope="module")
def site() -> Iterator[EgressSite]:
    s = EgressSite.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def desktop(site: EgressSite) -> Iterator[Any]:
    settings: Settings = load_settings(browser_allowed_hosts=(f"127.0.0.1:{site.port}",))
    for program in (settings.xvfb_path, "openbox", "xterm", "curl"):
        need(shutil.which(program) is not None, f"{program} is not installed (apt-get install xvfb openbox xterm curl)")
    from worker.desktop import DesktopHost

    saved = {k: os.environ.get(k) for k in ("DISPLAY", "XAUTHORITY")}
    proxy = EgressProxy()
    host = DesktopHost(settings, proxy)
    yield host
    host.close()
    proxy.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def curl(desktop: Any, session: Any, url: str) -> str:
    """Run curl in the session (its environment, so its proxy variables); returns "<status> <body>"."""
    proc = spawn(session, ["curl", "-s", "-o", str(session.home / "body"), "-w", "%{http_code}", url])
    proc.wait(timeout=30)
    out = subprocess.run(["cat", str(session.home / "body")], capture_output=True, text=True).stdout
    return f"{proc.returncode} {out}"


def test_a_desktop_programs_requests_go_through_the_proxy(desktop: Any, site: EgressSite,
                                                          listener: Listener) -> None:
    # Given a desktop task with its rules
    events: list[dict[str, Any]] = []
    computer = desktop.open(800, 600, egress=EgressRules("task_desk", on_block=events.append))
    try:
        # When a program of its session fetches the allowed site and a loopback service
        assert "site /hello" in curl(desktop, computer.session, site.url("/hello"))
        refused = curl(desktop, computer.session, listener.url("/secret"))
        # Then the site answered, the service saw nothing, and the refusal is reported
        assert "egress filter refused" in refused and listener.accepts == 0
        assert [e["host"] for e in events] == ["127.0.0.1"] and events[0]["port"] == listener.port
        assert any(listener.netloc in b for b in execute(computer, Action("wait", seconds=0)).blocked or ())
    finally:
        computer.close()


def test_the_desktops_chromium_is_filtered_too(desktop: Any, site: EgressSite, listener: Listener) -> None:
    need(bool(load_settings().chromium_path), "Chromium is not installed")
    events: list[dict[str, Any]] = []
    computer = desktop.open(800, 600, egress=EgressRules("task_desk", on_block=events.append))
    try:
        page = site.page(f'<title>egress-desk</title><img src="{site.redirect(listener.url("/pixel"))}">')
        assert execute(computer, Action("navigate", url=page)).ok
        eventually(lambda: any(listener.netloc in e["url"] for e in events), 30, "the refused image")
        assert listener.accepts == 0
        assert any(h.path.startswith("/redirect") for h in site.hits)  # Chromium reached the allowed site
    finally:
        computer.close()


def test_a_persistent_sessions_programs_follow_the_tasks_rules(desktop: Any, site: EgressSite) -> None:
    # Given a persistent session whose task ended
    first = desktop.open(800, 600, persistent=True, owner="t1", egress=EgressRules("one"))
    session = first.session
    first.close()
    # Then its programs are refused while no task runs
    assert "no task is running" in curl(desktop, session, site.url("/between"))
    # And get the next task's rules when it opens on the same session (not persistent: closing it ends the session)
    second = desktop.open(800, 600, owner="t1", egress=EgressRules("two", allowed_domains=("example.com",)))
    try:
        assert second.session is session
        assert "not in the task's allowed_domains" in curl(desktop, session, site.url("/second"))
    finally:
        second.close()
    assert not any(h.path in ("/between", "/second") for h in site.hits)
