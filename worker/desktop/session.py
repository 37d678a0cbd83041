"""Desktop sessions: one task's HOME, environment and processes on a display, and ending them without a trace.

Every process started for a session carries ``LODESTAR_DESKTOP_SESSION=<token>`` in its environment (inherited by
the shell's children, Chromium, anything the agent launches), so ending the session finds and kills all of them
through /proc, closes any window left on the display and deletes HOME. Session processes get a minimal environment
(``display.base_env``: no ``LODESTAR_*`` secrets of the worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.settings import Settings
from worker.desktop.display import DesktopError, Display, base_env
from worker.desktop.homes import unpack_home
from worker.desktop.processes import alive, send_signal

log = logging.getLogger(__name__)

SESSION_ENV = "LODESTAR_DESKTOP_SESSION"
"""Environment variable that marks every process of a desktop session (value: the session's random token)."""


@dataclass
class DesktopSession:
    """One task's share of the display: its HOME, its marked processes, the URL last opened in its browser."""

    token: str
    home: Path
    env: dict[str, str]
    display: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    persistent: bool = False
    url: str = ""
    owner: str = ""
    """The tenant whose task started the session: a persistent session is only ever handed to the same tenant."""


def marked(pid: int, token: str) -> bool:
    """True when process ``pid``'s environment carries ``LODESTAR_DESKTOP_SESSION=<token>`` (False when it is gone
    or another user's)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{SESSION_ENV}={token}".encode() in environ.split(b"\0")


def session_pids(token: str) -> list[int]:
    """Pids of the live processes whose environment carries ``LODESTAR_DESKTOP_SESSION=<token>`` (Linux /proc)."""
    me = os.getpid()
    return [pid for pid in (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
            if pid != me and marked(pid, token) and alive(pid)]


def spawn(session: DesktopSession, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a program in ``session`` (its HOME, its environment and mark); it dies with the session.

    Raises:
        OSError: the program could not be started (not found, not executable).
    """
    proc = subprocess.Popen(argv, env=session.env, cwd=session.home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    session.procs.append(proc)
    return proc


def start_session(d: Display, settings: Settings, extra_env: dict[str, str] | None = None,
                  home_state: bytes | None = None) -> DesktopSession:
    """A fresh session on ``d``: a new HOME (holding ``home_state``, a saved environment's tar.gz, when given) and
    token, and the start-up program (``desktop_startup``, none when empty) running, its first window shown and
    holding the keyboard focus (waited for: typing may start at once). ``extra_env`` goes in the environment of
    every program of the session (the egress proxy's variables).

    Raises:
        DesktopError: ``home_state`` is not a saved HOME, or the start-up program failed to start, exited, or
            showed no window within ``desktop_start_timeout`` seconds (the session is ended first).
    """
    token = secrets.token_hex(12)
    home = Path(tempfile.mkdtemp(prefix=f"lodestar-home-{d.number}-"))
    env = {**base_env(d, home), **(extra_env or {}), SESSION_ENV: token}
    session = DesktopSession(token, home, env, d.number)
    if home_state is not None:
        try:
            unpack_home(home, home_state)
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(home, ignore_errors=True)
            raise DesktopError(f"the saved environment's home folder cannot be restored: {exc}") from exc
    command = settings.desktop_startup.strip()
    if not command:
        return session
    # Windows listed before the program starts (the WM's probe or a previous session's window, not let go of yet)
    # are not its window, unless a session process owns one: the X id of a window gone may be reused already.
    listed = set(d.windows.client_ids())
    try:
        proc = spawn(session, shlex.split(command))
    except OSError as exc:
        end_session(session, d, settings.desktop_kill_grace)
        raise DesktopError(f"start-up program {command!r} failed to start: {exc}") from exc

    def its_own(window: Any) -> bool:
        if window.id not in listed:
            return True
        pid = d.windows.pid(window)
        return pid is not None and marked(pid, token)

    timeout = settings.desktop_start_timeout
    window = d.windows.wait_for(its_own, timeout, watch=proc)
    if window is None:
        code = proc.poll()
        end_session(session, d, settings.desktop_kill_grace)
        raise DesktopError(f"start-up program {command!r} " + (
            f"exited with code {code}" if code is not None else f"showed no window within {timeout:.0f} s"))
    if not d.windows.focus(window, timeout):  # typing starts next: keys sent before the focus arrives are lost
        log.warning("start-up program %r: its window did not get the keyboard focus within %.0f s", command, timeout)
    return session


def end_session(session: DesktopSession, d: Display | None, grace: float) -> None:
    """Kill every process of ``session`` (SIGTERM, SIGKILL after ``grace`` seconds), close windows left on ``d``
    (when it is the session's display and still running), delete its HOME."""
    for rnd in range(4):  # a dying shell or a loop may start more: look again until nothing is left
        pids = set(session_pids(session.token)) | {p.pid for p in session.procs if p.poll() is None}
        if not pids:
            break
        for pid in pids:
            send_signal(pid, signal.SIGTERM if rnd == 0 else signal.SIGKILL)
        deadline = time.monotonic() + (grace if rnd == 0 else 1.0)
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            for p in session.procs:
                p.poll()
            time.sleep(0.02)
    else:
        log.warning("desktop session %s: processes survived SIGKILL: %s", session.token, session_pids(session.token))
    for p in session.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(1)
    if d is not None and d.number == session.display and d.xvfb.poll() is None:
        from Xlib import error

        with contextlib.suppress(error.XError, OSError):
            for window in d.windows.client_windows():  # a window of a process that escaped the mark
                window.kill_client(onerror=error.CatchError())
            d.conn.sync()
            # Wait until the WM has let go of the dead windows: the next session's first window often gets the
            # same X id, and a WM that still manages the old one ignores the new one's map request.
            deadline = time.monotonic() + 2.0
            while d.windows.client_windows() and time.monotonic() < deadline:
                time.sleep(0.01)
    shutil.rmtree(session.home, ignore_errors=True)
