"""Desktop tasks on real Xvfb displays: through the HTTP API (a desktop worker with 2 slots, Redis database 12) and
against a ``DesktopHost`` in this process. Effects are checked from outside: files the agent's shell or a Tk app wrote,
screenshots, processes left (or not) on the machine."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.settings import load_settings
from tests.conftest import LiveStack, Site, need, start_stack
from worker.computer import ActionError, Target

pytestmark = [pytest.mark.redis, pytest.mark.worker]

TK_APP = Path(__file__).parent / "desktop_tk_app.py"


def desktop_available() -> None:
    settings = load_settings()
    for program in (settings.xvfb_path, "openbox", "xterm", "xdotool"):
        need(shutil.which(program) is not None, f"{program} is not installed (apt-get install xvfb openbox xterm "
                                                 "xdotool)")


def waits(n: int, seconds: float = 0.2) -> str:
    return "\n".join(f"wait {seconds}" for _ in range(n))


def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "the condition") -> Any:
    """Poll ``check()`` until it returns something truthy; returns it. Raises AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def renamed(token: str) -> str:
    """A shell command that titles the focused window "done-<token>": run after a command, a scripted
    ``expect "done-<token>"`` then waits until the command has run (the session reset would stop it)."""
    return f"xdotool getactivewindow set_window --name done-{token}"


def read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def image_size(jpeg: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(jpeg)).size


# --- through the API ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def desk(redis_base: str, site: Site) -> Iterator[LiveStack]:
    """API + a desktop worker with 2 slots (two processes, two displays) on Redis database 12."""
    desktop_available()
    stack, info = start_stack(f"{redis_base}/12", site, concurrency=2, kinds=("desktop",))
    yield info
    stack.stop()


def start(desk: LiveStack, script: str, **body: Any) -> str:
    resp = desk.http().post(f"{desk.base_url}/agent/tasks",
                            json={"agent_type": "scripted", "kind": "desktop", "instruction": script, **body})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["task_id"])


def events_of(desk: LiveStack, task_id: str) -> list[dict[str, Any]]:
    """The task's events from its SSE stream (which closes after the end event)."""
    resp = desk.http().get(f"{desk.base_url}/agent/tasks/{task_id}/events", stream=True, timeout=60)
    assert resp.status_code == 200, resp.text
    return [json.loads(line[6:]) for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def test_a_scripted_task_types_a_shell_command_into_xterm(desk: LiveStack, tmp_path: Path) -> None:
    # Given a script that types a command into the start-up xterm (focused from the first step) and presses Enter
    token = secrets.token_hex(4)
    script = f'''type "echo hi-{token} > {tmp_path}/out.txt; echo $HOME > {tmp_path}/home.txt; {renamed(token)}"
press Enter
expect "done-{token}"
done "typed"'''
    # When it runs on a 1024x768 desktop
    task_id = start(desk, script, viewport_width=1024, viewport_height=768, screenshot_mode="base64")
    task = desk.wait_ended(task_id, timeout=30)
    # Then the shell ran it, in a HOME of its own that is deleted once the task ended
    assert (task["status"], task["exit_code"], task["result"]) == ("completed", 0, "typed"), task
    eventually(lambda: read(tmp_path / "home.txt") is not None, 10, "the shell writing its files")
    assert read(tmp_path / "out.txt") == f"hi-{token}\n"
    home = Path((read(tmp_path / "home.txt") or "").strip())
    assert home.name.startswith("lodestar-home-") and home != Path.home()
    eventually(lambda: not home.exists(), 10, "removing the task's HOME")
    # And every step's screenshot is the whole 1024x768 screen
    steps = [e for e in events_of(desk, task_id) if e["type"] == "step"]
    # type, Enter, expect (one look, more when the shell is slow to retitle the window), done
    assert [e["step"] for e in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 4
    for event in steps:
        assert event["screenshot"].startswith("data:image/jpeg;base64,")
        assert image_size(base64.b64decode(event["screenshot"].split(",", 1)[1])) == (1024, 768)
    assert steps[1]["actions"] == [{"type": "key", "keys": "Enter"}] and steps[1]["results"][0]["ok"] is True


def test_a_tk_app_is_driven_by_coordinates_and_keys(desk: LiveStack, tmp_path: Path) -> None:
    state_file = tmp_path / "tk.json"
    script = f'''type "{sys.executable} {TK_APP} {state_file}"
press Enter
expect "tk-ready"
click 200,150
click 200,150
double_click 500,400
right_click 700,500
click 50,50
type "abc"
press Shift+x
press é
press Enter
press Control+s
press ArrowUp
press F13
expect "tk-key F13"
done "clicked"'''
    task = desk.wait_ended(start(desk, script, viewport_width=800, viewport_height=600), timeout=40)
    assert (task["status"], task["exit_code"]) == ("completed", 0), (task["error"], task["message"])
    state = json.loads(read(state_file) or "{}")
    assert state["screen"] == [800, 600] and state["ready"] is True
    assert state["count"] == 2  # the two clicks inside the button; the others landed where they were aimed
    assert state["clicks"] == [[200, 150, 1], [200, 150, 1], [500, 400, 1], [500, 400, 1], [700, 500, 3],
                               [50, 50, 1]]
    assert state["lines"] == ["abcXé"] and state["saved"] is True
    assert state["keys"] == ["Up", "F13"]  # F13 has no keycode on Xvfb: pressed through a spare one
    # and the app dies with the session
    eventually(lambda: subprocess.run(["pgrep", "-f", str(state_file)], capture_output=True).returncode == 1, 10,
               "the session reset stopping the Tk app")


def test_non_ascii_text_is_typed_intact(desk: LiveStack, tmp_path: Path) -> None:
    text = "héllo ✓ ñü 日本語"
    token = secrets.token_hex(4)
    script = f'type "echo \'{text}\' > {tmp_path}/u.txt; {renamed(token)}"\npress Enter\nexpect "done-{token}"\ndone'
    task = desk.wait_ended(start(desk, script), timeout=30)
    assert task["status"] == "completed", task
    assert read(tmp_path / "u.txt") == text + "\n"


def test_two_tasks_at_once_get_two_displays_that_do_not_see_each_other(desk: LiveStack, tmp_path: Path) -> None:
    # Each task names its xterm window, waits until the other has named its own (a file barrier), then lists the
    # windows named "lodestar-*" that its display shows
    uid = secrets.token_hex(3)

    def script(me: str, other: str) -> str:
        d = tmp_path
        line = (f"xdotool getactivewindow set_window --name lodestar-{me}-{uid}; echo $DISPLAY > {d}/{me}.display;"
                f" touch {d}/{me}.ready; for i in $(seq 100); do [ -f {d}/{other}.ready ] && break; sleep 0.1; done;"
                f" [ -f {d}/{other}.ready ] && touch {d}/{me}.met;"
                f" xdotool search --name lodestar- getwindowname %@ > {d}/{me}.seen;"
                f" xdotool getactivewindow set_window --name searched-{me}-{uid}")
        return f'type "{line}"\npress Enter\nwait 1\nexpect "searched-{me}-{uid}"\ndone'

    a, b = start(desk, script("A", "B")), start(desk, script("B", "A"))
    tasks = [desk.wait_ended(t, timeout=40) for t in (a, b)]
    assert [t["status"] for t in tasks] == ["completed", "completed"], tasks
    assert (tmp_path / "A.met").exists() and (tmp_path / "B.met").exists()  # both titles were set at once
    display_a, display_b = read(tmp_path / "A.display"), read(tmp_path / "B.display")
    assert display_a and display_b and display_a != display_b
    assert (read(tmp_path / "A.seen") or "").split() == [f"lodestar-A-{uid}"]
    assert (read(tmp_path / "B.seen") or "").split() == [f"lodestar-B-{uid}"]


def test_pause_holds_a_desktop_task_and_resume_continues_it(desk: LiveStack, tmp_path: Path) -> None:
    script = f'type "echo before > {tmp_path}/p.txt"\npress Enter\n{waits(12)}\n' \
             f'type "echo after >> {tmp_path}/p.txt; {renamed("p")}"\npress Enter\nexpect "done-p"\ndone'
    task_id = start(desk, script)
    desk.wait_until(task_id, lambda t: t["steps_taken"] >= 4)
    assert desk.http().post(f"{desk.base_url}/agent/tasks/{task_id}/pause").json()["status"] == "paused"
    before = desk.wait_until(task_id, lambda t: t["status"] == "paused")["steps_taken"]
    time.sleep(1.2)  # ~6 steps would run here if the pause did not hold
    during = desk.http().get(f"{desk.base_url}/agent/tasks/{task_id}").json()
    # at most the step in flight when the pause arrived (it acts after its last check) lands, however slow it is
    assert during["status"] == "paused" and during["steps_taken"] <= before + 1, during
    assert desk.http().post(f"{desk.base_url}/agent/tasks/{task_id}/resume").json()["status"] == "running"
    task = desk.wait_ended(task_id, timeout=30)
    assert task["status"] == "completed" and task["steps_taken"] == 18, task
    assert read(tmp_path / "p.txt") == "before\nafter\n"  # the same shell, kept through the pause


def test_cancel_stops_a_desktop_task_and_kills_what_it_started(desk: LiveStack) -> None:
    marker = str(40_000 + secrets.randbelow(20_000))
    task_id = start(desk, f'type "sleep {marker} &"\npress Enter\n{waits(50)}')
    # the shell runs the command when it gets to it (a loaded machine: after a few more steps)
    eventually(lambda: subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 0, 10,
               "the shell starting the background process")
    resp = desk.http().post(f"{desk.base_url}/agent/tasks/{task_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    task = desk.wait_ended(task_id)
    assert (task["status"], task["exit_code"]) == ("cancelled", 4)
    eventually(lambda: subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1,
               10, "killing the cancelled task's background process")
    after = desk.http().get(f"{desk.base_url}/agent/tasks/{task_id}").json()
    assert after["steps_taken"] <= task["steps_taken"] + 1


def test_a_display_that_dies_under_a_task_fails_it_with_exit_code_5_and_the_slot_goes_on(desk: LiveStack) -> None:
    # Given a desktop task running on a slot
    task_id = start(desk, waits(100))
    task = desk.wait_until(task_id, lambda t: t["status"] == "running" and t["steps_taken"] >= 1)
    slot = int(task["worker"].rsplit(":", 1)[1])
    # When that slot's Xvfb is killed
    xvfb = [pid for pid in _descendants(slot) if _name(pid) == "Xvfb"]
    assert xvfb, "the slot has no Xvfb"
    for pid in xvfb:
        os.kill(pid, signal.SIGKILL)
    # Then the task fails with exit code 5, naming the display, and the same slot runs the next task on a new display
    ended = desk.wait_ended(task_id)
    assert (ended["status"], ended["exit_code"]) == ("failed", 5) and "display" in ended["error"].lower(), ended
    nxt = start(desk, 'press Enter\ndone "new display"')
    again = desk.wait_ended(nxt)
    assert again["status"] == "completed", again


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_a_click_by_name_fails_clearly_and_navigation_obeys_the_network_guard(desk: LiveStack) -> None:
    by_name = desk.wait_ended(start(desk, 'click "OK"\ndone'), timeout=30)
    assert (by_name["status"], by_name["exit_code"]) == ("failed", 1), by_name
    assert 'click text "OK" needs an accessibility tree; desktop tasks take coordinates' in by_name["error"]
    refused = desk.wait_ended(start(desk, "goto http://10.11.12.13/admin\ndone"), timeout=30)
    assert refused["status"] == "failed" and "private address" in refused["error"], refused


def test_navigate_opens_the_url_in_the_desktops_chromium(desk: LiveStack, site: Site) -> None:
    need(bool(load_settings().chromium_path), "Chromium is not installed")
    token = secrets.token_hex(4)
    url = f"{site.url('counter.html')}?desktop={token}"
    # expect reads the focused window's title: Chromium's window shows the page's title once the page is loaded
    task = desk.wait_ended(start(desk, f'goto {url}\nexpect "Counter - Chromium"\ndone'), timeout=40)
    assert task["status"] == "completed", task
    assert task["current_url"] == url
    eventually(lambda: subprocess.run(["pgrep", "-f", f"desktop={token}"], capture_output=True).returncode == 1, 10,
               "the session reset stopping Chromium")


# --- one DesktopHost in this process -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host() -> Iterator[Any]:
    desktop_available()
    from worker.desktop import DesktopHost

    saved = {k: os.environ.get(k) for k in ("DISPLAY", "XAUTHORITY")}
    desktop = DesktopHost(load_settings())
    yield desktop
    desktop.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize(("chord", "keys"), [
    ("Control+a", ["ctrl", "a"]), ("Control+A", ["ctrl", "a"]), ("Enter", ["enter"]), ("ArrowUp", ["up"]),
    ("Meta", ["win"]), ("F5", ["f5"]), ("Shift+Tab", ["shift", "tab"]), (" ", ["space"]), ("A", ["A"]),
    ("Control+Shift+t", ["ctrl", "shift", "t"]), ("+", ["+"]), ("Control++", ["ctrl", "+"]), ("é", ["é"]),
    ("Capslock", ["capslock"]),
])
def test_playwright_chords_map_to_x_key_names(chord: str, keys: list[str]) -> None:
    from worker.desktop import to_x_keys

    assert to_x_keys(chord) == keys


def test_unknown_key_names_are_refused() -> None:
    from worker.desktop import to_x_keys

    with pytest.raises(ActionError, match="unknown key 'Hyper'"):
        to_x_keys("Control+Hyper")


def test_every_key_in_the_table_can_be_pressed_on_the_display(host: Any) -> None:
    from worker.desktop import KEYS, x_keysym

    computer = host.open(640, 480)  # binds pyautogui to the display: import it after
    try:
        from pyautogui import _pyautogui_x11 as x11

        assert [name for name in KEYS.values() if not x11.keyboardMapping.get(name) and not x_keysym(name)] == []
        for chord in ("F24", "Control+F13", "Shift+ArrowLeft", "é"):
            computer.key(chord)
        observation = computer.observe()
        assert observation.accessibility is None and image_size(observation.screenshot) == (640, 480)
        assert observation.title == "xterm"  # the session's window: open() waited until it had the focus
        with pytest.raises(ActionError, match="needs an accessibility tree"):
            computer.locate(Target("text", "OK"))
    finally:
        computer.close()


def test_a_saved_home_is_restored_before_the_start_up_program_runs(host: Any, tmp_path: Path) -> None:
    from worker.desktop import DesktopError, session_pids

    # Given a session left on the slot, whose HOME holds a file and a shell setting, saved as an environment's state
    left = host.open(640, 480, persistent=True, owner="t1")
    left_home, left_token = left.session.home, left.session.token
    (left_home / "notes.txt").write_text("note 1")
    (left_home / ".bashrc").write_text("export LODESTAR_RESTORED=yes\n")
    state = left.save_state()
    left.close()
    # When the next task opens with that state
    restored = host.open(640, 480, owner="t1", state=state)
    try:
        # Then the session left on the slot was ended (processes and HOME), and a fresh HOME holds the saved files
        assert restored.session.home != left_home and not left_home.exists() and session_pids(left_token) == []
        assert (restored.session.home / "notes.txt").read_text() == "note 1"
        # And the start-up shell read the restored settings when it started
        restored.type(f"echo ${{LODESTAR_RESTORED:-unset}} > {tmp_path}/restored.txt\n")
        eventually(lambda: read(tmp_path / "restored.txt"), 5, "the shell writing the file")
        assert read(tmp_path / "restored.txt") == "yes\n"
    finally:
        restored.close()
    # And a state that is not a saved HOME fails the environment's start
    with pytest.raises(DesktopError, match="cannot be restored"):
        host.open(640, 480, owner="t1", state=b"not a tar.gz")
    host.open(640, 480, owner="t1").close()  # the display is free again


def test_a_persistent_session_is_left_to_the_next_task(host: Any, tmp_path: Path) -> None:
    from worker.desktop import session_pids

    first = host.open(640, 480, persistent=True)
    first.type(f"export LODESTAR_MARK=kept-{tmp_path.name}\n")
    home, token = first.session.home, first.session.token
    first.close()
    assert home.exists() and session_pids(token)  # nothing was reset
    second = host.open(640, 480)
    assert second.session.home == home
    second.type(f"echo $LODESTAR_MARK > {tmp_path}/kept.txt\n")
    eventually(lambda: read(tmp_path / "kept.txt"), 5, "the shell writing the file")
    second.close()
    assert read(tmp_path / "kept.txt") == f"kept-{tmp_path.name}\n"
    assert not home.exists() and session_pids(token) == []  # the non-persistent task's end reset it
    third = host.open(640, 480)
    third.type(f"echo ${{LODESTAR_MARK:-unset}} > {tmp_path}/fresh.txt\n")
    eventually(lambda: read(tmp_path / "fresh.txt"), 5, "the shell writing the file")
    third.close()
    assert read(tmp_path / "fresh.txt") == "unset\n" and third.session.home != home


def test_a_new_session_types_into_its_own_window_not_one_already_on_the_display(host: Any, tmp_path: Path) -> None:
    # Given a window of another X client that the window manager lists and has focused when a session starts (as
    # the WM's start-up probe was on a loaded machine, or a window of the previous session not yet let go of)
    from Xlib.display import Display

    host.open(640, 480).close()  # the display runs at this size: the next open starts no new one
    other = Display(os.environ["DISPLAY"])
    decoy = other.screen().root.create_window(0, 0, 200, 100, 0, other.screen().root_depth)
    decoy.set_wm_name("decoy")
    decoy.map()
    other.sync()

    def decoy_active() -> bool:
        active = host.windows.active_window()
        return active is not None and active.id == decoy.id and host.windows.has_focus(decoy)

    eventually(decoy_active, 5, "the window manager focusing the decoy")
    # When a task starts and types at once
    computer = host.open(640, 480)
    try:
        computer.type(f"echo typed > {tmp_path}/t.txt\n")
        # Then its own xterm got the keys: the session waited for the xterm's window and for the focus on it
        assert eventually(lambda: read(tmp_path / "t.txt"), 10, "the shell writing the file") == "typed\n"
        assert "xterm" in host.windows.wm_class(host.windows.active_window()).lower()
    finally:
        computer.close()  # also closes the decoy (a window left on the display)
        with contextlib.suppress(Exception):
            other.close()


def test_the_display_restarts_for_a_new_size_and_after_xvfb_dies(host: Any) -> None:
    from worker.desktop import DesktopError

    computer = host.open(640, 480)
    with pytest.raises(DesktopError, match="busy"):
        host.open(640, 480)  # one task per display
    host._display.xvfb.kill()  # Xvfb dies under a running task: its next observation says so
    host._display.xvfb.wait()
    with pytest.raises(DesktopError, match="died"):
        computer.observe()
    computer.close()
    computer = host.open(640, 480)  # supervised: a new Xvfb
    assert image_size(computer.screenshot()) == (640, 480)
    computer.close()
    computer = host.open(800, 600)  # another size: the display is restarted at it
    try:
        assert image_size(computer.screenshot()) == (800, 600)
        assert (computer.width, computer.height) == (800, 600)
    finally:
        computer.close()


def test_a_persistent_session_never_reaches_another_tenant(host: Any, tmp_path: Path) -> None:
    from worker.desktop import session_pids

    # Given tenant A's persistent session with a process still running in it
    first = host.open(640, 480, persistent=True, owner="t_a")
    home, token = first.session.home, first.session.token
    first.close()
    assert home.exists() and session_pids(token)
    # When tenant B's task is next on the slot
    second = host.open(640, 480, owner="t_b")
    try:
        # Then B gets a fresh session: A's HOME is gone and A's processes were stopped
        assert second.session.home != home and second.session.owner == "t_b"
        assert not home.exists() and session_pids(token) == []
    finally:
        second.close()
