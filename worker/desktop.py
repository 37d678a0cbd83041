"""The desktop implementation of ``Computer``: one Xvfb display per worker process, driven with pyautogui.

A ``DesktopHost`` lives as long as its worker process (slot) and owns one X display: Xvfb on the first free display
number in ``desktop_display_min..desktop_display_max``, started on the first desktop task at that task's viewport
size and started again when a task wants another size or when Xvfb (or the window manager) died. A light window
manager (``desktop_window_manager``, openbox by default) gives new windows the keyboard focus. The display is never
shared: one host per process, one task per host at a time (pyautogui talks to one display per process).

Each task runs in a *session*: a fresh HOME directory, the start-up program (``desktop_startup``, xterm by default)
with the keyboard focus, and every process started for the task marked with ``LODESTAR_DESKTOP_SESSION=<token>`` in
its environment (inherited by the shell's children, Chromium, anything the agent launches). Ending a session kills
every process carrying the mark, closes any window left and deletes HOME, so the next task starts clean; a task
started with ``persistent: true`` leaves its session (windows, processes, HOME) to the next task on that slot.
Session processes get a minimal environment (no ``LODESTAR_*`` secrets of the worker), which points HTTP(S) at the
worker's egress proxy (``worker/egress/``, one gate per host, with the running task's rules); a program that ignores
proxy variables is not filtered (README, "Security").

The display accepts only clients that present its MIT-MAGIC-COOKIE-1 (an Xauthority file written per display), so
other local users cannot watch or drive an agent's desktop.

Coordinates are screen pixels, origin top-left; the screen is the task's viewport. Screenshots are JPEG bytes of the
whole screen through mss (~20 ms at 1024x768 on 2 cores, see the README's figures). Text is typed through
pyautogui for what the US keymap has, and through spare keycodes re-mapped to the characters' keysyms for the rest
(``_KeysymTyper``), so "héllo ✓" and CJK text arrive intact.
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
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.settings import Settings
from worker.computer import ActionError, Observation, Target
from worker.egress import EgressPolicy, EgressProxy, EgressRules, Gate, chromium_proxy_args, process_proxy, proxy_env

log = logging.getLogger(__name__)

SESSION_ENV = "LODESTAR_DESKTOP_SESSION"
"""Environment variable that marks every process of a desktop session (value: the session's random token)."""

WHEEL_PIXELS = 100
"""Scroll distance of one mouse-wheel click, in pixels: ``scroll`` sends ``round(dy / WHEEL_PIXELS)`` clicks (>= 1)."""

MULTI_CLICK_GAP = 0.03
"""Seconds between the clicks of a double or triple click: a human's rhythm (well inside every toolkit's double-click
time), which also leaves the window manager's click-to-focus grab time to hand each press on."""

KEYS: dict[str, str] = {
    "Control": "ctrl", "Shift": "shift", "Alt": "alt", "Meta": "win",
    "Enter": "enter", "Escape": "esc", "Tab": "tab", " ": "space", "Backspace": "backspace", "Delete": "delete",
    "Insert": "insert", "Home": "home", "End": "end", "PageUp": "pageup", "PageDown": "pagedown",
    "ArrowUp": "up", "ArrowDown": "down", "ArrowLeft": "left", "ArrowRight": "right",
    "CapsLock": "capslock", "NumLock": "numlock", "ScrollLock": "scrolllock", "PrintScreen": "printscreen",
    "Pause": "pause", "ContextMenu": "apps",
    **{f"F{n}": f"f{n}" for n in range(1, 25)},
}
"""The one table from Playwright key names (what ``normalize_key`` produces) to pyautogui's X key names.
Single printable ASCII characters need no entry (they are their own name); lookups ignore case."""

_KEY_INDEX = {name.lower(): x_name for name, x_name in KEYS.items()}
_MODIFIERS = frozenset({"ctrl", "shift", "alt", "win"})


class DesktopError(RuntimeError):
    """The desktop environment could not start (no free display, Xvfb or the start-up program failed)."""


def to_x_keys(chord: str) -> list[str]:
    """Translate a Playwright-style chord ("Control+a", "Shift+ArrowUp", "F5", "+") to pyautogui key names.

    Returns e.g. ``["ctrl", "a"]``. In a chord with a modifier a letter is sent as its lower-case key, the way people
    write shortcuts ("Control+A" is Ctrl+a; add Shift for Ctrl+Shift+a). Single characters outside the table are
    returned as they are (the caller types non-ASCII ones).

    Raises:
        ActionError: an empty chord, or a multi-character name the table does not know.
    """
    if chord in ("+", " "):
        parts = [chord]
    elif chord.endswith("++"):
        parts = [*chord[:-2].split("+"), "+"]
    else:
        parts = chord.split("+")
    if not chord or any(p == "" for p in parts):
        raise ActionError(f"bad key chord {chord!r}")
    names = []
    for part in parts:
        if part.lower() in _KEY_INDEX and (len(part) > 1 or part == " "):
            names.append(_KEY_INDEX[part.lower()])
        elif len(part) == 1:
            names.append(part)
        else:
            raise ActionError(f"unknown key {part!r} in {chord!r} (known: {', '.join(sorted(KEYS, key=str.lower))})")
    if len(names) > 1 and _MODIFIERS.intersection(names):
        names = [n.lower() if len(n) == 1 else n for n in names]
    return names


# --- processes -----------------------------------------------------------------------------------------------------
def _orphan_guard() -> list[str]:
    """A command prefix that kills the child when this worker process dies (``setpriv --pdeathsig``), if available."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def session_pids(token: str) -> list[int]:
    """Pids of the live processes whose environment carries ``LODESTAR_DESKTOP_SESSION=<token>`` (Linux /proc)."""
    needle = f"{SESSION_ENV}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or another user's process
            continue
        if needle in environ.split(b"\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 2.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds, and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _write_xauthority(path: Path, number: int, cookie: bytes) -> None:
    """Write an Xauthority file granting ``cookie`` for display ``:number`` (FamilyLocal for this host + FamilyWild)."""

    def counted(data: bytes) -> bytes:
        return struct.pack(">H", len(data)) + data

    def entry(family: int, address: bytes) -> bytes:
        return (struct.pack(">H", family) + counted(address) + counted(str(number).encode())
                + counted(b"MIT-MAGIC-COOKIE-1") + counted(cookie))

    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(entry(256, socket.gethostname().encode()) + entry(65535, b""))
    tmp.chmod(0o600)
    tmp.replace(path)


# --- typing what the keymap lacks ------------------------------------------------------------------------------------
class _KeysymTyper:
    """Types characters the keymap lacks by mapping their keysyms onto spare keycodes, then pressing those (XTest).

    xdotool does the same per character and re-maps one scratch keycode immediately, so a client that reads the
    keymap late types the wrong character (measured: 2 of 5 lines of "héllo ✓ ñü 日本語" intact at its default
    12 ms delay). Here a mapping stays in place until its keycode is the least recently used of the spare pool and
    has not been pressed for ``settle`` seconds, so every key event a client reads still means its character.
    """

    def __init__(self, conn: Any, settle: float = 0.15):
        self._conn = conn
        self._settle = settle
        info = conn.display.info
        first, count = info.min_keycode, info.max_keycode - info.min_keycode + 1
        mapping = conn.get_keyboard_mapping(first, count)
        self._width = len(mapping[0])
        # keycode 8 is the lowest legal one and some toolkits ignore it; the rest that have no keysym are spare
        self._spare = [first + i for i, syms in enumerate(mapping) if not any(syms) and first + i > 8][::-1]
        self._mapped: OrderedDict[int, int] = OrderedDict()  # keysym -> keycode, least recently used first
        self._used_at: dict[int, float] = {}

    @staticmethod
    def keysym(char: str) -> int:
        """X keysym of one character: Latin-1 keysyms equal the code point, the rest are 0x01000000 + code point."""
        cp = ord(char)
        return cp if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF else 0x01000000 | cp

    def _keycode(self, keysym: int) -> int:
        if keysym in self._mapped:
            self._mapped.move_to_end(keysym)
            return self._mapped[keysym]
        if not self._spare and not self._mapped:
            raise ActionError("this display's keymap has no spare keycode to type non-ASCII text with")
        if self._spare:
            keycode = self._spare.pop()
        else:
            _, keycode = self._mapped.popitem(last=False)
            wait = self._used_at.get(keycode, 0.0) + self._settle - time.monotonic()
            if wait > 0:  # a client may not have read the previous character's key events yet
                time.sleep(wait)
        self._conn.change_keyboard_mapping(keycode, [(keysym,) * self._width])
        self._conn.sync()
        self._mapped[keysym] = keycode
        return keycode

    def press(self, keysym: int) -> None:
        """Press and release ``keysym`` on a spare keycode (modifiers already held stay held)."""
        from Xlib import X
        from Xlib.ext.xtest import fake_input

        keycode = self._keycode(keysym)
        fake_input(self._conn, X.KeyPress, keycode)
        fake_input(self._conn, X.KeyRelease, keycode)
        self._conn.sync()
        self._used_at[keycode] = time.monotonic()

    def type_char(self, char: str) -> None:
        self.press(self.keysym(char))


def x_keysym(name: str) -> int:
    """The X keysym of a pyautogui key name or a single character (0 when X has no such keysym)."""
    if len(name) == 1:
        return _KeysymTyper.keysym(name)
    from Xlib import XK

    for candidate in (name, name.capitalize(), name.upper()):
        keysym = XK.string_to_keysym(candidate)
        if keysym:
            return int(keysym)
    return 0


# --- the host --------------------------------------------------------------------------------------------------------
@dataclass
class _Display:
    number: int
    width: int
    height: int
    xvfb: subprocess.Popen[bytes]
    workdir: Path
    xauthority: Path
    conn: Any  # Xlib.display.Display: our own connection for window queries and keysym typing
    grabber: Any  # mss.MSS
    typer: _KeysymTyper
    atoms: dict[str, int]
    wm: subprocess.Popen[bytes] | None = None
    ewmh: bool = False
    """The window manager announced itself (EWMH): windows are listed and focused through it."""

    @property
    def name(self) -> str:
        return f":{self.number}"


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


class DesktopHost:
    """Owns one Xvfb display (+ window manager) for the life of a worker process and runs one task at a time on it.

    ``open(width, height, persistent)`` returns a :class:`DesktopComputer` (starting or restarting the display as
    needed); closing that computer ends the task's session unless it was persistent. Not thread-safe: a second
    ``open`` while a task holds the display raises ``DesktopError`` (run desktop workers with the prefork or solo
    pool: one display per process).
    """

    def __init__(self, settings: Settings, proxy: EgressProxy | None = None):
        self.settings = settings
        self._proxy = proxy
        self._display: _Display | None = None
        self._session: DesktopSession | None = None
        self._busy = threading.Lock()
        self._gui: ModuleType | None = None
        self._gate: Gate | None = None

    @property
    def gate(self) -> Gate:
        """This display's gate of the egress proxy (its port stays the same, so a persistent session's programs keep
        reaching it); created on first use."""
        if self._gate is None or self._gate.closed:
            proxy = self._proxy or process_proxy(self.settings)
            self._gate = proxy.gate(EgressPolicy.from_settings(self.settings))
        return self._gate

    # -- display lifecycle -----------------------------------------------------------------------------------------
    @property
    def display_name(self) -> str | None:
        """``":N"`` of the running display, or None before the first task."""
        return self._display.name if self._display else None

    def _display_healthy(self, width: int, height: int) -> bool:
        d = self._display
        return d is not None and d.xvfb.poll() is None and (d.width, d.height) == (width, height)

    def _ensure_display(self, width: int, height: int) -> _Display:
        d = self._display
        if d is not None and not self._display_healthy(width, height):
            why = "Xvfb died" if d.xvfb.poll() is not None else f"the task wants {width}x{height}"
            log.info("restarting display %s (%dx%d): %s", d.name, d.width, d.height, why)
            if self._session is not None and self._session.persistent:
                log.warning("the persistent session on %s is lost: %s", d.name, why)
            self._stop_display()
        if self._display is None:
            self._display = self._start_display(width, height)
        elif self._display.wm is not None and self._display.wm.poll() is not None:
            log.warning("window manager on %s died; starting it again", self._display.name)
            self._start_wm(self._display)
        return self._display

    def _free_numbers(self) -> list[int]:
        numbers = []
        for n in range(self.settings.desktop_display_min, self.settings.desktop_display_max + 1):
            lock = Path(f"/tmp/.X{n}-lock")
            try:
                pid = int(lock.read_text().strip())
            except (FileNotFoundError, ValueError):
                numbers.append(n)
                continue
            except OSError:
                continue
            if not _alive(pid):  # a stale lock: Xvfb removes it itself
                numbers.append(n)
        return numbers

    def _start_display(self, width: int, height: int) -> _Display:
        xvfb = shutil.which(self.settings.xvfb_path)
        if xvfb is None:
            raise DesktopError(f"Xvfb not found ({self.settings.xvfb_path!r}): apt-get install xvfb")
        workdir = Path(tempfile.mkdtemp(prefix="lodestar-display-"))
        xauthority = workdir / "Xauthority"
        cookie = secrets.token_bytes(16)
        started = time.perf_counter()
        for number in self._free_numbers():
            _write_xauthority(xauthority, number, cookie)
            proc = self._spawn_xvfb(xvfb, number, width, height, xauthority)
            if proc is not None:
                break
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            raise DesktopError(f"no free X display in :{self.settings.desktop_display_min}.."
                               f":{self.settings.desktop_display_max}")
        try:
            display = self._connect(proc, number, width, height, workdir, xauthority)
            self._start_wm(display)
        except BaseException:
            _stop(proc)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        log.info("display :%d (%dx%d) ready in %.0f ms", number, width, height, (time.perf_counter() - started) * 1000)
        return display

    def _spawn_xvfb(self, xvfb: str, number: int, width: int, height: int,
                    xauthority: Path) -> subprocess.Popen[bytes] | None:
        """Start Xvfb on ``:number``; returns it once it accepts connections, None if the number was taken."""
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                [*_orphan_guard(), xvfb, f":{number}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp",
                 "-auth", str(xauthority), "-noreset", "-displayfd", str(write_fd)],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(write_fd)
        # Xvfb writes "N" and "\n" separately and dies if the pipe is closed in between: read the whole line
        answer = b""
        deadline = time.monotonic() + self.settings.desktop_start_timeout
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
        _stop(proc)  # the number was taken meanwhile (another worker process), or Xvfb hung
        log.info("display :%d unavailable (%s)", number, "in use" if answer or proc.returncode else "timeout")
        return None

    def _connect(self, xvfb: subprocess.Popen[bytes], number: int, width: int, height: int, workdir: Path,
                 xauthority: Path) -> _Display:
        name = f":{number}"
        # pyautogui opens DISPLAY when first imported and keeps that connection: point it at this display
        os.environ["DISPLAY"] = name
        os.environ["XAUTHORITY"] = str(xauthority)
        import mss
        import pyautogui
        from pyautogui import _pyautogui_x11 as x11
        from Xlib.display import Display

        pyautogui.PAUSE = 0  # the default sleeps 100 ms after every call
        # FAILSAFE aborts a call when the pointer sits in a screen corner: a guard for a human at a real mouse.
        # Nobody holds Xvfb's pointer, corners are legitimate targets for an agent, and a runaway task is stopped
        # through the API (pause / cancel), so it is off.
        pyautogui.FAILSAFE = False
        old, x11._display = x11._display, Display(name)  # a fresh connection: the old one's server may be gone
        with contextlib.suppress(Exception):
            old.close()
        self._gui = pyautogui
        conn = Display(name)
        atoms = {a: conn.intern_atom(a) for a in (
            "_NET_ACTIVE_WINDOW", "_NET_CLIENT_LIST", "_NET_SUPPORTING_WM_CHECK", "_NET_WM_NAME", "UTF8_STRING",
            "_NET_WM_PID")}
        grabber = mss.MSS(display=name)
        return _Display(number, width, height, xvfb, workdir, xauthority, conn, grabber, _KeysymTyper(conn), atoms)

    def _base_env(self, d: _Display, home: Path) -> dict[str, str]:
        user = pwd.getpwuid(os.getuid())
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home),
            "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": user.pw_shell or "/bin/sh", "LANG": "C.UTF-8",
            "DISPLAY": d.name, "XAUTHORITY": str(d.xauthority), "TERM": "xterm", **proxy_env(self.gate.url),
        }

    def _start_wm(self, d: _Display) -> None:
        command = self.settings.desktop_window_manager.strip()
        if not command:
            return
        _stop(d.wm)
        d.ewmh = False
        try:
            d.wm = subprocess.Popen(
                [*_orphan_guard(), *shlex.split(command)], env=self._base_env(d, d.workdir), cwd=d.workdir,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            raise DesktopError(f"window manager {command!r} failed to start: {exc}") from exc
        root = d.conn.screen().root
        deadline = time.monotonic() + self.settings.desktop_start_timeout
        while root.get_full_property(d.atoms["_NET_SUPPORTING_WM_CHECK"], 0) is None:
            if d.wm.poll() is not None:
                raise DesktopError(f"window manager {command!r} exited with code {d.wm.returncode}")
            if time.monotonic() > deadline:
                log.warning("window manager %r never announced itself (no EWMH?); going on", command)
                return
            time.sleep(0.01)
        d.ewmh = True
        # The WM announces itself before its event loop runs; a window mapped meanwhile is managed late, and Xt
        # programs (xterm) then wait their 5 s wmTimeout. A probe window that shows up in the client list means the
        # WM is really managing windows
        # (openbox even drops a map request that arrives during its start-up, so the probe asks again until then).
        probe = root.create_window(0, 0, 1, 1, 0, d.conn.screen().root_depth)
        probe.set_wm_name("lodestar-wm-probe")
        asked = 0.0
        while probe.id not in self._client_ids(d):
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

    def _client_ids(self, d: _Display) -> list[int]:
        from Xlib import X

        prop = d.conn.screen().root.get_full_property(d.atoms["_NET_CLIENT_LIST"], X.AnyPropertyType)
        return list(prop.value) if prop else []

    def _stop_display(self) -> None:
        d, self._display = self._display, None
        if d is None:
            return
        if self._session is not None:
            self._end_session(self._session)
        for closer in (d.grabber.close, d.conn.close):
            with contextlib.suppress(Exception):
                closer()
        _stop(d.wm)
        _stop(d.xvfb)
        shutil.rmtree(d.workdir, ignore_errors=True)

    # -- windows --------------------------------------------------------------------------------------------------
    def client_windows(self) -> list[Any]:
        """Top-level application windows on the display (EWMH client list, else mapped children of the root)."""
        d = self._require()
        from Xlib import X, error

        if d.ewmh:
            return [d.conn.create_resource_object("window", w) for w in self._client_ids(d)]
        root = d.conn.screen().root
        windows = []
        for w in root.query_tree().children:
            with contextlib.suppress(error.XError):
                attrs = w.get_attributes()
                if attrs.map_state == X.IsViewable and not attrs.override_redirect:
                    windows.append(w)
        return windows

    def active_window(self) -> Any | None:
        """The window with the keyboard focus (per the window manager, else the X server); None when none has."""
        d = self._require()
        from Xlib import X

        if not d.ewmh:
            focus = d.conn.get_input_focus().focus
            return None if isinstance(focus, int) or focus.id == d.conn.screen().root.id else focus
        prop = d.conn.screen().root.get_full_property(d.atoms["_NET_ACTIVE_WINDOW"], X.AnyPropertyType)
        if not prop or not prop.value or not prop.value[0]:
            return None
        return d.conn.create_resource_object("window", prop.value[0])

    def window_title(self, window: Any) -> str:
        """A window's title (``_NET_WM_NAME``, else ``WM_NAME``); "" when it has none or is gone."""
        d = self._require()
        from Xlib import error

        try:
            prop = window.get_full_property(d.atoms["_NET_WM_NAME"], d.atoms["UTF8_STRING"])
            if prop and prop.value:
                value = prop.value
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            name = window.get_wm_name()
            return name.decode("latin-1") if isinstance(name, bytes) else (name or "")
        except error.XError:
            return ""

    def window_class(self, window: Any) -> str:
        """``"instance class"`` of a window's WM_CLASS ("" when unknown)."""
        from Xlib import error

        try:
            return " ".join(window.get_wm_class() or ())
        except error.XError:
            return ""

    def wait_for_window(self, predicate: Callable[[Any], bool], timeout: float,
                        watch: subprocess.Popen[bytes] | None = None) -> Any | None:
        """Poll until a client window satisfies ``predicate``; returns it, or None after ``timeout`` seconds or when
        ``watch`` exits first."""
        deadline = time.monotonic() + timeout
        from Xlib import error

        while time.monotonic() < deadline:
            with contextlib.suppress(error.XError):
                for window in self.client_windows():
                    if predicate(window):
                        return window
            if watch is not None and watch.poll() is not None:
                return None
            time.sleep(0.02)
        return None

    def focus(self, window: Any, timeout: float) -> None:
        """Make ``window`` the focused one: the WM usually did already; if it has not within ``timeout`` seconds
        (at most 1 s), ask the WM (``_NET_ACTIVE_WINDOW``) and the X server directly."""
        d = self._require()
        from Xlib import X, error
        from Xlib.protocol import event

        deadline = time.monotonic() + min(timeout, 1.0)
        while d.ewmh and time.monotonic() < deadline:
            active = self.active_window()
            if active is not None and active.id == window.id:
                return
            time.sleep(0.02)
        with contextlib.suppress(error.XError):
            if d.ewmh:
                request = event.ClientMessage(window=window, client_type=d.atoms["_NET_ACTIVE_WINDOW"],
                                              data=(32, [2, X.CurrentTime, 0, 0, 0]))
                d.conn.screen().root.send_event(
                    request, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
            window.set_input_focus(X.RevertToParent, X.CurrentTime)
            window.configure(stack_mode=X.Above)
            d.conn.sync()

    # -- sessions -------------------------------------------------------------------------------------------------
    def _require(self) -> _Display:
        if self._display is None:
            raise DesktopError("the desktop display is not running")
        return self._display

    def spawn(self, session: DesktopSession, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a program in ``session`` (its HOME, its environment and mark); it dies with the session."""
        proc = subprocess.Popen(argv, env=session.env, cwd=session.home, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        session.procs.append(proc)
        return proc

    def _new_session(self, d: _Display) -> DesktopSession:
        token = secrets.token_hex(12)
        home = Path(tempfile.mkdtemp(prefix=f"lodestar-home-{d.number}-"))
        env = {**self._base_env(d, home), SESSION_ENV: token}
        session = DesktopSession(token, home, env, d.number)
        command = self.settings.desktop_startup.strip()
        if not command:
            return session
        try:
            proc = self.spawn(session, shlex.split(command))
        except OSError as exc:
            self._end_session(session)
            raise DesktopError(f"start-up program {command!r} failed to start: {exc}") from exc
        timeout = self.settings.desktop_start_timeout
        window = self.wait_for_window(lambda w: True, timeout, watch=proc)
        if window is None:
            code = proc.poll()
            self._end_session(session)
            raise DesktopError(f"start-up program {command!r} " + (
                f"exited with code {code}" if code is not None else f"showed no window within {timeout:.0f} s"))
        self.focus(window, timeout)
        return session

    def _end_session(self, session: DesktopSession) -> None:
        """Kill every process of ``session``, close windows left on the display, delete its HOME."""
        grace = self.settings.desktop_kill_grace
        for rnd in range(4):  # a dying shell or a loop may start more: look again until nothing is left
            pids = set(session_pids(session.token)) | {p.pid for p in session.procs if p.poll() is None}
            if not pids:
                break
            for pid in pids:
                _signal(pid, signal.SIGTERM if rnd == 0 else signal.SIGKILL)
            deadline = time.monotonic() + (grace if rnd == 0 else 1.0)
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                for p in session.procs:
                    p.poll()
                time.sleep(0.02)
        else:
            log.warning("desktop session %s: processes survived SIGKILL: %s", session.token,
                        session_pids(session.token))
        for p in session.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(1)
        d = self._display
        if d is not None and d.number == session.display and d.xvfb.poll() is None:
            from Xlib import error

            with contextlib.suppress(error.XError, OSError):
                for window in self.client_windows():  # a window of a process that escaped the mark
                    window.kill_client(onerror=error.CatchError())
                d.conn.sync()
                # Wait until the WM has let go of the dead windows: the next session's first window often gets the
                # same X id, and a WM that still manages the old one ignores the new one's map request.
                deadline = time.monotonic() + 2.0
                while self.client_windows() and time.monotonic() < deadline:
                    time.sleep(0.01)
        shutil.rmtree(session.home, ignore_errors=True)
        if self._session is session:
            self._session = None

    def open(self, width: int, height: int, persistent: bool = False, owner: str = "",
             egress: EgressRules | None = None) -> DesktopComputer:
        """A ``Computer`` on this host's display at ``width`` x ``height`` pixels, in a fresh session (or the one a
        persistent task of the same ``owner`` (tenant) left, if the size matches; another tenant's persistent
        session is reset first: its windows, processes and HOME never reach another tenant).

        ``persistent``: when this task ends, keep its session (windows, processes, HOME) for the next task here.
        ``egress``: the task's rules on the egress proxy, in force until the task ends (None: the deployment's only).

        Raises:
            DesktopError: a task already holds the display, or the display / start-up program failed to start.
        """
        if not self._busy.acquire(blocking=False):
            raise DesktopError("this worker process's display is busy with another task (desktop workers need the "
                               "prefork or solo pool: one display per process)")
        try:
            d = self._ensure_display(width, height)
            session = self._session
            if session is not None and session.owner != owner:
                self._end_session(session)
                session = None
            if session is not None and session.display != d.number:
                session = None
            if session is not None:
                log.info("reusing the persistent desktop session on %s", d.name)
            else:
                session = self._session = self._new_session(d)
                session.owner = owner
            session.persistent = persistent
            self.gate.open(egress or EgressRules())
            return DesktopComputer(self, session, self.settings)
        except BaseException:
            self._busy.release()
            raise

    def release(self, session: DesktopSession) -> None:
        """End of a task: reset ``session`` unless it is persistent, and free the display for the next task."""
        try:
            if not session.persistent or self._session is not session:
                self._end_session(session)
        finally:
            if self._gate is not None:
                self._gate.reset()  # a persistent session's programs are refused until the next task opens
            self._busy.release()

    def close(self) -> None:
        """Stop everything: the session, the window manager, Xvfb (worker shutdown)."""
        if self._session is not None:
            self._end_session(self._session)
        self._stop_display()
        if self._gate is not None:
            self._gate.close()

    # -- used by DesktopComputer ----------------------------------------------------------------------------------
    @property
    def gui(self) -> ModuleType:
        """pyautogui, bound to this host's display."""
        if self._gui is None:
            raise DesktopError("the desktop display is not running")
        return self._gui

    def check_alive(self) -> _Display:
        """The display, or ``DesktopError`` when Xvfb died under the task (the task fails with exit code 5)."""
        d = self._require()
        if d.xvfb.poll() is not None:
            raise DesktopError(f"the X display {d.name} died (Xvfb exited with code {d.xvfb.returncode})")
        return d

    def capture(self, quality: int) -> bytes:
        """JPEG bytes (``quality`` 1-100) of the whole screen, at the display's size."""
        from PIL import Image

        d = self.check_alive()
        shot = d.grabber.grab({"left": 0, "top": 0, "width": d.width, "height": d.height})
        image = Image.frombytes("RGB", shot.size, shot.bgra, "raw", "BGRX")
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        return out.getvalue()

    def type_unmapped(self, char: str) -> None:
        """Type one character the keymap lacks (see ``_KeysymTyper``)."""
        self.check_alive().typer.type_char(char)

    def press_keysym(self, keysym: int) -> None:
        """Press a keysym the keymap lacks, on a spare keycode (see ``_KeysymTyper``)."""
        self.check_alive().typer.press(keysym)


class DesktopComputer:
    """``Computer`` over one task's session on a ``DesktopHost`` display; coordinates are screen pixels.

    Elements cannot be found by name here (there is no accessibility tree): ``locate`` and ``select`` raise
    ``ActionError``, so agents act by coordinates and keys. ``navigate`` opens the URL in Chromium on the desktop.
    """

    def __init__(self, host: DesktopHost, session: DesktopSession, settings: Settings):
        d = host.check_alive()
        self.host = host
        self.session = session
        self.width, self.height = d.width, d.height
        self.display = d.name
        self._settings = settings
        self._quality = settings.screenshot_quality
        self._closed = False

    def take_refusals(self) -> list[str]:
        """What the egress proxy refused for this display's programs since the last call ("<url>: <reason>")."""
        return [r.describe() for r in self.host.gate.take_refusals()]

    # -- seeing -------------------------------------------------------------------------------------------------
    def screenshot(self) -> bytes:
        """JPEG bytes of the screen (``width`` x ``height``) at ``screenshot_quality``."""
        return self.host.capture(self._quality)

    def current_url(self) -> str:
        """The URL last opened with ``navigate`` in this session ("" before any)."""
        return self.session.url

    def observe(self, accessibility: bool = True) -> Observation:
        """Screenshot, the last navigated URL, and the focused window's title as ``title``; never an
        accessibility tree (``accessibility`` is None)."""
        shot = self.screenshot()
        window = self.host.active_window()
        title = self.host.window_title(window) if window is not None else ""
        return Observation(screenshot=shot, url=self.session.url, title=title, width=self.width, height=self.height,
                           accessibility=None)

    # -- acting -------------------------------------------------------------------------------------------------
    def click(self, x: int, y: int, button: str = "left", count: int = 1) -> None:
        """``count`` clicks of ``button`` ("left" | "middle" | "right") at (x, y), ``MULTI_CLICK_GAP`` apart."""
        gui = self.host.gui
        self.host.check_alive()
        for i in range(count):
            if i:
                time.sleep(MULTI_CLICK_GAP)
            gui.click(x, y, button=button)

    def double_click(self, x: int, y: int) -> None:
        self.click(x, y, count=2)

    def scroll(self, x: int, y: int, dx: int, dy: int) -> None:
        """Wheel clicks at (x, y): ``dy`` > 0 scrolls down, ``dx`` > 0 right; one click per ``WHEEL_PIXELS``."""
        gui = self.host.gui
        self.host.check_alive()
        gui.moveTo(x, y)
        if dy:
            gui.scroll(-max(1, round(abs(dy) / WHEEL_PIXELS)) * (1 if dy > 0 else -1), x=x, y=y)
        if dx:
            gui.hscroll(max(1, round(abs(dx) / WHEEL_PIXELS)) * (1 if dx > 0 else -1), x=x, y=y)

    def type(self, text: str) -> None:
        """Type ``text`` into the focused window: what the keymap has through pyautogui, other characters
        (accents, symbols, CJK...) through re-mapped spare keycodes. ``\\n`` presses Enter, ``\\t`` Tab."""
        gui = self.host.gui
        self.host.check_alive()
        from pyautogui import _pyautogui_x11 as x11

        run: list[str] = []
        for char in text:
            if x11.keyboardMapping.get(char):
                run.append(char)
                continue
            if run:
                gui.write("".join(run))
                run = []
            self.host.type_unmapped(char)
        if run:
            gui.write("".join(run))

    def key(self, keys: str) -> None:
        """Press one chord, e.g. "Control+a", "Enter", "Meta", "F5" (names from ``normalize_key``; see ``KEYS``).

        The keys are pressed in order and released in reverse. A last key the keymap lacks (F13-F24 on Xvfb, "é")
        is pressed through a spare keycode mapped to its keysym.

        Raises:
            ActionError: an unknown key name, or a key before the last that has no keycode.
        """
        gui = self.host.gui
        self.host.check_alive()
        from pyautogui import _pyautogui_x11 as x11

        names = to_x_keys(keys)
        *held, last = names
        missing = [n for n in held if not x11.keyboardMapping.get(n)]
        if missing:
            raise ActionError(f"key {missing[0]!r} of {keys!r} has no keycode on this display")
        keysym = 0 if x11.keyboardMapping.get(last) else x_keysym(last)
        if not keysym and not x11.keyboardMapping.get(last):
            raise ActionError(f"key {last!r} of {keys!r} has no X keysym")
        for name in held:
            gui.keyDown(name)
        try:
            if keysym:
                self.host.press_keysym(keysym)
            else:
                gui.press(last)
        finally:
            for name in reversed(held):
                gui.keyUp(name)

    def move(self, x: int, y: int) -> None:
        self.host.check_alive()
        self.host.gui.moveTo(x, y)

    def drag(self, x: int, y: int, x2: int, y2: int) -> None:
        """Press the left button at (x, y), move to (x2, y2) in 10 steps, release."""
        gui = self.host.gui
        self.host.check_alive()
        gui.moveTo(x, y)
        gui.mouseDown(x, y, button="left")
        for i in range(1, 11):
            gui.moveTo(x + (x2 - x) * i // 10, y + (y2 - y) * i // 10)
        gui.mouseUp(x2, y2, button="left")

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def navigate(self, url: str) -> None:
        """Open ``url`` in Chromium on this desktop (started on first use with the browser worker's safe flags and a
        profile in the session's HOME); returns once a Chromium window exists.

        The URL is checked first; the pages Chromium loads afterwards go through the egress proxy like the rest of
        the session's HTTP(S).

        Raises:
            ActionError: the guard refuses the URL, Chromium is missing, or no window appeared in time.
        """
        from worker.browser import CHROMIUM_ARGS

        if "://" not in url and not url.startswith(("about:", "data:")):
            url = "https://" + url
        reason = self.host.gate.check_url(url)
        if reason:
            raise ActionError(f"navigation to {url} refused: {reason}")
        chromium = self._settings.chromium_path or shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            raise ActionError("navigate on a desktop needs Chromium (apt-get install chromium, or "
                              "LODESTAR_CHROMIUM_PATH)")
        profile = self.session.home / ".config" / "lodestar-chromium"
        argv = [chromium, *CHROMIUM_ARGS, *chromium_proxy_args(self.host.gate.url), f"--user-data-dir={profile}",
                "--test-type", "--no-default-browser-check",
                "--window-position=0,0", f"--window-size={self.width},{self.height}", url]
        self.host.check_alive()
        self.host.spawn(self.session, argv)
        timeout = max(self._settings.desktop_start_timeout, self._settings.action_timeout)
        window = self.host.wait_for_window(lambda w: "chromium" in self.host.window_class(w).lower(), timeout)
        if window is None:
            raise ActionError(f"Chromium showed no window within {timeout:.0f} s")
        self.host.focus(window, 2.0)
        self.session.url = url

    # -- grounding targets ----------------------------------------------------------------------------------------
    def locate(self, target: Target) -> tuple[int, int]:
        """Always raises ``ActionError``: a desktop has no accessibility tree to find ``target`` in."""
        raise ActionError(f"click {target.describe()} needs an accessibility tree; desktop tasks take coordinates "
                          "(click <x>,<y>)")

    def select(self, target: Target, option: str) -> None:
        """Always raises ``ActionError`` (see ``locate``)."""
        raise ActionError(f'select "{option}" in {target.describe()} needs an accessibility tree; desktop tasks take '
                          "coordinates and keys")

    def close(self) -> None:
        """End of the task: the host resets the session unless it is persistent. Idempotent."""
        if not self._closed:
            self._closed = True
            self.host.release(self.session)
