"""One X display's lifecycle: Xvfb on a free display number, its Xauthority cookie, our connections, the window
manager.

:func:`start_display` writes a fresh MIT-MAGIC-COOKIE-1 into an Xauthority file of its own, starts Xvfb on the
first free number of a range (``-displayfd`` says when it accepts connections; a number another process took
meanwhile is skipped), binds pyautogui, mss and our Xlib connection to it, and starts the window manager
(:func:`start_wm`), waiting until it really manages windows. :func:`stop_display` undoes all of that.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pwd
import secrets
import select
import shlex
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.settings import Settings
from worker.desktop.keys import KeysymTyper
from worker.desktop.processes import alive, orphan_guard, stop
from worker.desktop.windows import Windows

log = logging.getLogger(__name__)


class DesktopError(RuntimeError):
    """The desktop environment could not start (no free display, Xvfb or the start-up program failed), or it died
    (Xvfb exited) under a task."""


@dataclass
class Display:
    """A running Xvfb display and what this process holds on it."""

    number: int
    width: int
    height: int
    xvfb: subprocess.Popen[bytes]
    workdir: Path
    """Private directory of the display (Xauthority file, the window manager's HOME); deleted when it stops."""
    xauthority: Path
    conn: Any
    """Our own ``Xlib.display.Display`` connection, for window queries and keysym typing."""
    windows: Windows
    grabber: Any  # mss.MSS
    typer: KeysymTyper
    gui: ModuleType
    """pyautogui, bound to this display."""
    wm: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """The ``DISPLAY`` value, ``":N"``."""
        return f":{self.number}"

    def capture(self, quality: int) -> bytes:
        """JPEG bytes (``quality`` 1-100) of the whole screen, ``width`` x ``height`` pixels."""
        from PIL import Image

        shot = self.grabber.grab({"left": 0, "top": 0, "width": self.width, "height": self.height})
        image = Image.frombytes("RGB", shot.size, shot.bgra, "raw", "BGRX")
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()


def free_numbers(first: int, last: int) -> list[int]:
    """Display numbers in ``first..last`` (inclusive) without a live ``/tmp/.X<n>-lock`` owner."""
    numbers = []
    for n in range(first, last + 1):
        lock = Path(f"/tmp/.X{n}-lock")
        try:
            pid = int(lock.read_text().strip())
        except (FileNotFoundError, ValueError):
            numbers.append(n)
            continue
        except OSError:
            continue
        if not alive(pid):  # a stale lock: Xvfb removes it itself
            numbers.append(n)
    return numbers


def write_xauthority(path: Path, number: int, cookie: bytes) -> None:
    """Write an Xauthority file granting ``cookie`` for display ``:number`` (FamilyLocal for this host + FamilyWild),
    mode 0600, replaced atomically."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    def entry(family: int, address: bytes) -> bytes:
        return (struct.pack(">H", family) + counted(address) + counted(str(number).encode())
                + counted(b"MIT-MAGIC-COOKIE-1") + counted(cookie))

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(entry(256, socket.gethostname().encode()) + entry(65535, b""))
    tmp.chmod(0o600)
    tmp.replace(path)


def base_env(d: Display, home: Path) -> dict[str, str]:
    """The minimal environment of a program on display ``d`` with HOME ``home`` (none of the worker's variables
    beyond PATH)."""
    user = pwd.getpwuid(os.getuid())
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home),
        "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": user.pw_shell or "/bin/sh", "LANG": "C.UTF-8",
        "DISPLAY": d.name, "XAUTHORITY": str(d.xauthority), "TERM": "xterm",
    }


def start_display(settings: Settings, width: int, height: int) -> Display:
    """Start Xvfb at ``width`` x ``height`` (24-bit) on the first free number of ``desktop_display_min..max``, bind
    pyautogui (and this process's ``DISPLAY`` / ``XAUTHORITY``) to it, and start the window manager.

    Raises:
        DesktopError: Xvfb is not installed, no display number is free, or the window manager failed to start.
    """
    xvfb = shutil.which(settings.xvfb_path)
    if xvfb is None:
        raise DesktopError(f"Xvfb not found ({settings.xvfb_path!r}): apt-get install xvfb")
    workdir = Path(tempfile.mkdtemp(prefix="lodestar-display-"))
    xauthority = workdir / "Xauthority"
    cookie = secrets.token_bytes(16)
    started = time.perf_counter()
    for number in free_numbers(settings.desktop_display_min, settings.desktop_display_max):
        write_xauthority(xauthority, number, cookie)
        proc = _spawn_xvfb(xvfb, number, width, height, xauthority, settings.desktop_start_timeout)
        if proc is not None:
            break
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        raise DesktopError(f"no free X display in :{settings.desktop_display_min}..:{settings.desktop_display_max}")
    try:
        display = _connect(proc, number, width, height, workdir, xauthority)
        start_wm(settings, display)
    except BaseException:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    log.info("display :%d (%dx%d) ready in %.0f ms", number, width, height, (time.perf_counter() - started) * 1000)
    return display


def _spawn_xvfb(xvfb: str, number: int, width: int, height: int, xauthority: Path,
                timeout: float) -> subprocess.Popen[bytes] | None:
    """Start Xvfb on ``:number``; returns it once it accepts connections, None if the number was taken."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            [*orphan_guard(), xvfb, f":{number}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp",
             "-auth", str(xauthority), "-noreset", "-displayfd", str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(write_fd)
    # Xvfb writes "N" and "\n" separately and dies if the pipe is closed in between: read the whole line
    answer = b""
    deadline = time.monotonic() + timeout
    try:
        while not answer.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 32) if ready else b""
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(read_fd)
    if answer.strip() == str(number).encode() and proc.poll() is None:
        return proc
    stop(proc)  # the number was taken meanwhile (another worker process), or Xvfb hung
    log.info("display :%d unavailable (%s)", number, "in use" if answer or proc.returncode else "timeout")
    return None


def _connect(xvfb: subprocess.Popen[bytes], number: int, width: int, height: int, workdir: Path,
             xauthority: Path) -> Display:
    name = f":{number}"
    # pyautogui opens DISPLAY when first imported and keeps that connection: point it at this display
    os.environ["DISPLAY"] = name
    os.environ["XAUTHORITY"] = str(xauthority)
    import mss
    import pyautogui
    from pyautogui import _pyautogui_x11 as x11
    from Xlib.display import Display as XConnection

    pyautogui.PAUSE = 0  # the default sleeps 100 ms after every call
    # FAILSAFE aborts a call when the pointer sits in a screen corner: a guard for a human at a real mouse.
    # Nobody holds Xvfb's pointer, corners are legitimate targets for an agent, and a runaway task is stopped
    # through the API (pause / cancel), so it is off.
    pyautogui.FAILSAFE = False
    old, x11._display = x11._display, XConnection(name)  # a fresh connection: the old one's server may be gone
    with contextlib.suppress(Exception):
        old.close()
    conn = XConnection(name)
    return Display(number, width, height, xvfb, workdir, xauthority, conn, Windows(conn), mss.MSS(display=name),
                   KeysymTyper(conn), pyautogui)


def start_wm(settings: Settings, d: Display) -> None:
    """(Re)start the window manager (``desktop_window_manager``; none when empty) on ``d`` and wait, up to
    ``desktop_start_timeout`` seconds, until it announced itself (EWMH) and manages windows; a WM that never
    announces itself is kept, without EWMH (``d.windows.ewmh`` False).

    Raises:
        DesktopError: the window manager could not be started, or it exited during start-up.
    """
    command = settings.desktop_window_manager.strip()
    if not command:
        return
    stop(d.wm)
    d.windows.ewmh = False
    try:
        d.wm = subprocess.Popen(
            [*orphan_guard(), *shlex.split(command)], env=base_env(d, d.workdir), cwd=d.workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
    except OSError as exc:
        raise DesktopError(f"window manager {command!r} failed to start: {exc}") from exc
    deadline = time.monotonic() + settings.desktop_start_timeout
    while not d.windows.wm_announced():
        if d.wm.poll() is not None:
            raise DesktopError(f"window manager {command!r} exited with code {d.wm.returncode}")
        if time.monotonic() > deadline:
            log.warning("window manager %r never announced itself (no EWMH?); going on", command)
            return
        time.sleep(0.01)
    d.windows.ewmh = True
    # The WM announces itself before its event loop runs; a window mapped meanwhile is managed late, and Xt
    # programs (xterm) then wait their 5 s wmTimeout. A probe window that shows up in the client list means the
    # WM is really managing windows (openbox even drops a map request that arrives during its start-up, so the
    # probe asks again until then).
    probe = d.windows.root.create_window(0, 0, 1, 1, 0, d.conn.screen().root_depth)
    probe.set_wm_name("lodestar-wm-probe")
    asked = 0.0
    while probe.id not in d.windows.client_ids():
        if time.monotonic() > deadline:
            log.warning("window manager %r did not manage a probe window in time; going on", command)
            break
        if time.monotonic() - asked > 0.05:
            probe.map()
            d.conn.sync()
            asked = time.monotonic()
        time.sleep(0.005)
    probe.destroy()
    d.conn.sync()
    # Then wait until the WM has let go of the probe: one slow to unmanage it (a loaded machine) would still list
    # it, focused, when the first session looks for its start-up program's window.
    while probe.id in d.windows.client_ids() and time.monotonic() < deadline:
        time.sleep(0.005)


def stop_display(d: Display) -> None:
    """Close our connections to ``d``, stop its window manager and Xvfb, delete its private directory."""
    for closer in (d.grabber.close, d.conn.close):
        with contextlib.suppress(Exception):
            closer()
    stop(d.wm)
    stop(d.xvfb)
    shutil.rmtree(d.workdir, ignore_errors=True)
