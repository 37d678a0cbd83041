"""Persistent environments (issue 15) on the real stack: gunicorn API, a browser worker and a desktop worker with two
slots each (real Chromium, real Xvfb displays), Redis database 9, driven through the tzafon SDK.

A persistent browser task signs into a local site (an HttpOnly session cookie from the server, a localStorage
preference, an IndexedDB record, a file in the origin private file system); a task naming its environment_id,
run by the other worker process, is signed in with all four, and a task without it is not. A persistent desktop
task writes a file and a program setting (``git config --global``) in its HOME; a task with its environment_id, on
the other slot (another display), reads both. Which slot runs a task is forced by keeping the first one busy
(:func:`busy_elsewhere`), not left to chance.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveStack, Site, need, start_stack

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]

SLOTS = 2
SIGNED_IN_PREFS = "Theme dark, draft hello, file kept"
"""What login.html shows once signed in: its localStorage, IndexedDB and OPFS entries."""


@pytest.fixture(scope="module")
def live(redis_base: str, site: Site) -> Iterator[LiveStack]:
    stack, info = start_stack(f"{redis_base}/9", site, concurrency=SLOTS, kinds=("browser", "desktop"))
    yield info
    stack.stop()


@pytest.fixture
def sdk(live: LiveStack) -> Any:
    from tzafon import Lightcone

    return Lightcone(base_url=live.base_url, api_key=live.key, max_retries=0)


def submit(live: LiveStack, **body: Any) -> str:
    resp = live.http().post(f"{live.base_url}/agent/tasks", json={"agent_type": "scripted", **body}, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["task_id"])


def cancel(live: LiveStack, task_id: str) -> None:
    assert live.http().post(f"{live.base_url}/agent/tasks/{task_id}/cancel", timeout=30).status_code == 200


def busy_elsewhere(live: LiveStack, kind: str, worker: str) -> list[str]:
    """Keep slot ``worker`` (host:pid) busy with a long task so that the next task of ``kind`` runs on another
    slot; returns the blockers to cancel afterwards. With two slots: a first blocker that lands on the other slot
    is replaced by a second, which can only land on ``worker``."""
    blockers: list[str] = []
    script = {"instruction": "\n".join(["wait 0.3"] * 900), "max_steps": 901, "max_duration_seconds": 900}
    for _ in range(SLOTS):
        blockers.append(submit(live, kind=kind, **script))
        running = live.wait_until(blockers[-1], lambda t: t["status"] == "running", timeout=120)
        if running["worker"] == worker:
            for other in blockers[:-1]:
                cancel(live, other)
            for other in blockers[:-1]:  # its slot is free again once it ended
                live.wait_ended(other, timeout=60)
            return blockers[-1:]
    raise AssertionError(f"no blocker landed on {worker}: {blockers}")


def environment(live: LiveStack, env_id: str) -> dict[str, Any]:
    resp = live.http().get(f"{live.base_url}/agent/environments/{env_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_a_browser_login_carries_over_to_another_worker_process(live: LiveStack, site: Site, sdk: Any) -> None:
    page = site.url("login.html")
    # Given a persistent task (started through the SDK) that signs into the site
    started = sdk.agent.tasks.start(
        instruction=f'goto {page}\nexpect "Signed out"\ntype "ada" into "Username"\nclick "Sign in"\n'
                    f'expect "Signed in as ada"\nexpect "{SIGNED_IN_PREFS}"\ndone "signed in"',
        agent_type="scripted", kind="browser", persistent=True)
    first = live.wait_ended(started.task_id, timeout=120)
    assert (first["status"], first["exit_code"], first["error"]) == ("completed", 0, None), first
    # Then its JSON (also through the SDK) names the environment its state was saved into
    env_id = sdk.agent.tasks.retrieve_status(started.task_id).to_dict()["environment_id"]
    assert env_id == first["environment_id"] and env_id.startswith("env_")
    saved = environment(live, env_id)
    assert (saved["kind"], saved["saves"], saved["source_task_id"], saved["in_use_by"]) == (
        "browser", 1, started.task_id, None)
    assert saved["size_bytes"] > 0 and saved["saved_at"]
    # When a task names the environment and runs on the other worker process
    blockers = busy_elsewhere(live, "browser", first["worker"])
    again = sdk.agent.tasks.start(
        instruction=f'goto {page}\nexpect "Signed in as ada"\nexpect "{SIGNED_IN_PREFS}"\ndone "still in"',
        agent_type="scripted", kind="browser", environment_id=env_id)
    second = live.wait_ended(again.task_id, timeout=120)
    for blocker in blockers:
        cancel(live, blocker)
    # Then it was signed in already: the cookie, localStorage, IndexedDB and OPFS came with it
    assert second["worker"] != first["worker"]
    assert (second["status"], second["result"], second["environment_id"]) == ("completed", "still in", env_id), second
    # And it saved nothing (it was not persistent); a task without the environment is signed out
    assert environment(live, env_id)["saves"] == 1
    fresh = live.wait_ended(submit(live, kind="browser", instruction=f'goto {page}\nexpect "Signed out"\n'
                                                                      'expect "Theme none, draft none, file none"\n'
                                                                      'done'))
    assert fresh["status"] == "completed", fresh
    # And a persistent task that fails saves nothing: the environment stays as the last completed task left it
    failed = live.wait_ended(submit(live, kind="browser", persistent=True, environment_id=env_id,
                                    instruction=f'goto {page}\nfail "on purpose"'))
    assert (failed["status"], failed["environment_id"]) == ("failed", env_id), failed
    after = environment(live, env_id)
    assert (after["saves"], after["source_task_id"], after["in_use_by"]) == (1, started.task_id, None)


def test_a_desktop_home_carries_over_to_another_slot(live: LiveStack) -> None:
    for program in ("openbox", "xterm", "git"):  # the window manager, the start-up terminal, the program setting
        need(shutil.which(program) is not None, f"{program} is not installed (apt-get install {program})")
    # Given a persistent desktop task that writes a file and a program setting in its HOME (the start-up xterm's
    # shell; the window title says when the command is done)
    write = ("echo note-1 > ~/notes.txt && git config --global user.name ada && printf '\\033]0;saved-1\\007'")
    first_id = submit(live, kind="desktop", persistent=True,
                      instruction=f'type {json.dumps(write)}\npress Enter\nexpect "saved-1"\ndone "written"')
    first = live.wait_ended(first_id, timeout=180)
    assert (first["status"], first["exit_code"], first["error"]) == ("completed", 0, None), first
    env_id = first["environment_id"]
    saved = environment(live, env_id)
    assert (saved["kind"], saved["saves"], saved["source_task_id"]) == ("desktop", 1, first_id)
    # When a task with the environment_id runs on the other slot (another display, a new HOME)
    blockers = busy_elsewhere(live, "desktop", first["worker"])
    read = ("printf '\\033]0;seen-%s-%s\\007' \"$(cat ~/notes.txt)\" \"$(git config --global user.name)\"")
    second_id = submit(live, kind="desktop", environment_id=env_id, persistent=True,
                       instruction=f'type {json.dumps(read)}\npress Enter\nexpect "seen-note-1-ada"\ndone "read"')
    second = live.wait_ended(second_id, timeout=180)
    for blocker in blockers:
        cancel(live, blocker)
    # Then it found both (its script expected the title they make), and saved the environment again
    assert second["worker"] != first["worker"]
    assert (second["status"], second["result"]) == ("completed", "read"), second
    again = environment(live, env_id)
    assert (again["saves"], again["source_task_id"]) == (2, second_id)
