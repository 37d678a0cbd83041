"""Trajectories and replays end to end: a scripted task on a local page is recorded, read back as a trajectory,
exported as an archive by ``lodestar export``, then replayed with no model on the same page (it completes) and on
a changed page (it stops at the first divergence, naming the step)."""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lodestar.cli import main as lodestar
from tests.conftest import PAGES, LiveStack, Site

pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.worker]

PAGE = """<!doctype html>
<html><head><title>Replay me</title></head>
<body style="margin:0">
<button style="position:absolute; left:20px; top:20px; width:140px; height:40px"
        onclick="bump(1)">{add}</button>
<button style="position:absolute; left:200px; top:20px; width:140px; height:40px"
        onclick="bump(10)">{jump}</button>
<label style="position:absolute; left:20px; top:100px">Name <input id="name"></label>
<p style="position:absolute; left:20px; top:160px">Count: <span id="count">0</span></p>
<script>function bump(n) {{ var c = document.getElementById('count');
  c.textContent = String(Number(c.textContent) + n) }}</script>
</body></html>"""
JUMP = (270, 40)
"""The centre of the second button, clicked by coordinates."""


@pytest.fixture
def page(site: Site) -> Iterator[tuple[str, Path]]:
    """A page of its own under tests/pages (its URL and file), so that a test can change it under the same URL."""
    path = PAGES / f"_replay_{uuid.uuid4().hex[:10]}.html"
    path.write_text(PAGE.format(add="Add one", jump="Add ten"))
    try:
        yield site.url(path.name), path
    finally:
        path.unlink(missing_ok=True)


def script(url: str) -> str:
    return f'''goto {url}
click "Add one"
click {JUMP[0]},{JUMP[1]}
type "Ada" into "Name"
expect "Count: 11"
done "eleven"'''


def start(live: LiveStack, key: str | None = None, **body: Any) -> Any:
    return live.http(key or live.key).post(f"{live.base_url}/agent/tasks", json=body, timeout=30)


def trajectory(live: LiveStack, task_id: str) -> dict[str, Any]:
    resp = live.http().get(f"{live.base_url}/agent/tasks/{task_id}/trajectory", timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_a_recorded_task_exports_and_replays_on_its_page_and_stops_where_the_page_changed(
        live: LiveStack, page: tuple[str, Path], tmp_path: Path) -> None:
    url, path = page
    # Given a scripted task recorded through a batch
    batch = live.http().post(f"{live.base_url}/agent/tasks/batch", timeout=30, json=[
        {"instruction": script(url), "agent_type": "scripted", "viewport_width": 800, "viewport_height": 600}])
    assert batch.status_code == 200, batch.text
    source_id = batch.json()["tasks"][0]["task_id"]
    source = live.wait_ended(source_id)
    assert (source["status"], source["result"]) == ("completed", "eleven"), source

    # Then its trajectory holds each step: actions, URL, what each click hit, timings, the ARIA snapshot it read
    record = trajectory(live, source_id)
    assert record["format"] == "lodestar.trajectory/1"
    assert record["task"]["task_id"] == source_id and record["task"]["exit_code"] == 0
    assert record["task"]["viewport_width"] == 800 and record["task"]["instruction"] == script(url)
    steps = record["steps"]
    assert [s["step"] for s in steps] == list(range(1, source["steps_taken"] + 1))
    assert steps[0]["url"] == "about:blank" and steps[1]["url"] == url
    assert steps[1]["actions"] == [{"type": "click", "target": {"by": "text", "name": "Add one", "role": None,
                                                                "exact": True, "nth": 0}}]
    assert steps[1]["elements"] == [{"role": "button", "name": "Add one"}]
    assert steps[2]["actions"] == [{"type": "click", "x": JUMP[0], "y": JUMP[1]}]
    assert steps[2]["elements"] == [{"role": "button", "name": "Add ten"}]
    assert steps[3]["elements"] == [{"role": "textbox", "name": "Name"}]
    assert all(set(s["timings"]) == {"observe_ms", "decide_ms", "act_ms"} for s in steps)
    assert all(s["native_action"] is None and s["usage"] is None for s in steps)  # an offline agent
    expect = next(s for s in steps if s["aria"])
    assert 'button "Add one"' in expect["aria"] and "Count: 11" in expect["aria"]
    assert steps[-1]["actions"][0] == {"type": "done", "text": "eleven", "value": "eleven"}
    shot = live.http().get(steps[2]["screenshot"]["url"], timeout=30)
    assert shot.status_code == 200 and Image.open(io.BytesIO(shot.content)).size == (800, 600)

    # When the batch is exported
    out = tmp_path / "batch.zip"
    assert lodestar(["export", "--batch", batch.json()["batch_id"], str(out), "--url", live.base_url,
                     "--key", live.key]) == 0
    # Then the archive has the documented layout
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        tasks = [json.loads(line) for line in archive.read("tasks.jsonl").splitlines()]
        rows = [json.loads(line) for line in archive.read("steps.jsonl").splitlines()]
        osworld = [json.loads(line) for line in archive.read(f"{source_id}/traj.jsonl").splitlines()]
        saved = json.loads(archive.read(f"{source_id}/trajectory.json"))
        image = Image.open(io.BytesIO(archive.read(f"{source_id}/step_3.jpg")))
        result = archive.read(f"{source_id}/result.txt").decode()
    assert [(t["task_id"], t["folder"], t["exit_code"], t["steps"]) for t in tasks] == [
        (source_id, source_id, 0, len(steps))]
    assert {f"{source_id}/step_{n}.jpg" for n in range(1, len(steps) + 1)} <= names
    assert image.size == (800, 600) and result == "1.0\n"
    assert [r["screenshot"] for r in rows] == [f"{source_id}/step_{n}.jpg" for n in range(1, len(steps) + 1)]
    assert rows[2]["actions"] == steps[2]["actions"] and rows[2]["instruction"] == script(url)
    assert [line["step_num"] for line in osworld] == list(range(1, len(steps) + 1))
    assert osworld[-1]["done"] is True and osworld[-1]["reward"] == 1.0 and osworld[0]["reward"] == 0.0
    assert osworld[2]["screenshot_file"] == "step_3.jpg" and osworld[2]["info"]["url"] == url
    assert saved["steps"][2]["screenshot"] == {"step": 3, "file": "step_3.jpg"}

    # When it is replayed on the same page
    replay = start(live, instruction="replay", replay_of=source_id)
    assert replay.status_code == 200, replay.text
    again = live.wait_ended(replay.json()["task_id"])
    # Then the replay completes as the recording did, with no model and no cost, the same actions on the same page
    assert (again["status"], again["exit_code"], again["result"]) == ("completed", 0, "eleven"), again
    assert again["replay_of"] == source_id and again["agent_type"] == "replay"
    assert again["cost"] is None and again["usage"] is None
    replayed = trajectory(live, again["task_id"])
    assert [s["actions"] for s in replayed["steps"]] == [s["actions"] for s in steps]
    assert [s["elements"] for s in replayed["steps"]] == [s["elements"] for s in steps]
    assert replayed["task"]["viewport_width"] == 800

    # When the second button changed its name under the same URL, the replay stops at the step that clicked it
    path.write_text(PAGE.format(add="Add one", jump="Reset"))
    diverged = live.wait_ended(start(live, instruction="replay", replay_of=source_id).json()["task_id"])
    assert (diverged["status"], diverged["exit_code"]) == ("failed", 9), diverged
    assert diverged["error"].startswith(f"replay of {source_id} diverged at step 3: "), diverged["error"]
    assert '"Reset"' in diverged["error"] and '"Add ten"' in diverged["error"]
    assert diverged["steps_taken"] == 3

    # And when the first button is gone, it stops at step 2, whose click named it
    path.write_text(PAGE.format(add="Add two", jump="Add ten"))
    gone = live.wait_ended(start(live, instruction="replay", replay_of=source_id).json()["task_id"])
    assert (gone["exit_code"], gone["steps_taken"]) == (9, 2), gone
    assert gone["error"].startswith(f"replay of {source_id} diverged at step 2: "), gone["error"]
    assert "Add one" in gone["error"]


def test_a_replay_stops_at_the_first_step_whose_url_differs(live: LiveStack, page: tuple[str, Path],
                                                             site: Site) -> None:
    url, path = page
    link = '<!doctype html><html><body><a href="{to}">Go on</a></body></html>'
    path.write_text(link.format(to="counter.html"))
    source_id = start(live, instruction=f'goto {url}\nclick "Go on"\nexpect "Count: 0"\ndone "there"',
                      agent_type="scripted").json()["task_id"]
    recorded = live.wait_ended(source_id)
    assert recorded["exit_code"] == 0, recorded
    assert trajectory(live, source_id)["steps"][-1]["url"] == site.url("counter.html")
    # the link now leads elsewhere (same name, same place): the click succeeds, then the URL differs at the first
    # step after it that the recording saw on the link's target (or, where the recording's step still showed the
    # link's page, at that step)
    path.write_text(link.format(to="form.html"))
    task = live.wait_ended(start(live, instruction="replay", replay_of=source_id).json()["task_id"])
    assert task["exit_code"] == 9, task
    pattern = (f"replay of {source_id} diverged at step ([0-9]+): the page is {re.escape(site.url('form.html'))}, "
               f"the recording was at ({re.escape(site.url('counter.html'))}|{re.escape(url)})")
    match = re.fullmatch(pattern, task["error"])
    assert match and int(match.group(1)) >= 3, task["error"]


def test_replay_of_must_name_an_ended_task_of_the_caller(live: LiveStack) -> None:
    # an unknown id, and another tenant's task, are the same 404 naming replay_of (no tenant learns of another's)
    unknown = start(live, instruction="replay", replay_of="task_does_not_exist")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["fields"] == {"replay_of": ["no task task_does_not_exist (or it expired)"]}
    theirs = start(live, live.other_key, instruction="wait 0.2\nwait 0.2", agent_type="scripted").json()["task_id"]
    stolen = start(live, instruction="replay", replay_of=theirs)
    assert stolen.status_code == 404, stolen.text
    assert stolen.json()["error"]["fields"] == {"replay_of": [f"no task {theirs} (or it expired)"]}
    # its owner cannot replay it before it ended (409, waiting helps), and can once it has
    early = start(live, live.other_key, instruction="replay", replay_of=theirs)
    if early.status_code == 409:  # (it may have ended already on a fast machine)
        assert early.headers["x-should-retry"] == "true" and "replay_of" in early.json()["error"]["fields"]
    live.wait_ended(theirs, key=live.other_key)
    again = start(live, live.other_key, instruction="replay", replay_of=theirs)
    assert again.status_code == 200, again.text
    assert live.wait_ended(again.json()["task_id"], key=live.other_key)["exit_code"] == 0
    # in a batch, the item is rejected on its own, naming the field
    batch = live.http().post(f"{live.base_url}/agent/tasks/batch", timeout=30, json=[
        {"instruction": "replay", "replay_of": theirs}, {"instruction": 'done "ok"', "agent_type": "scripted"}])
    assert batch.status_code == 200 and batch.json()["accepted"] == 1, batch.text
    assert batch.json()["errors"][0]["error"]["fields"] == {"replay_of": [f"no task {theirs} (or it expired)"]}
    # and another tenant's trajectory is a 404, as its task is
    assert live.http().get(f"{live.base_url}/agent/tasks/{theirs}/trajectory", timeout=30).status_code == 404
    assert live.http(live.other_key).get(f"{live.base_url}/agent/tasks/{theirs}/trajectory",
                                         timeout=30).status_code == 200
