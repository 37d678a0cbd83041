"""``DesktopComputer``: the ``Computer`` protocol over one task's session on an X display, driven with pyautogui.

Coordinates are screen pixels, origin top-left; the screen is the task's viewport. Screenshots are JPEG bytes of the
whole screen through mss (~20 ms at 1024x768 on 2 cores, see the README's figures). Text is typed through
pyautogui for what the US keymap has, and through spare keycodes re-mapped to the characters' keysyms for the rest
(``keys.KeysymTyper``), so "héllo ✓" and CJK text arrive intact.
"""

from __future__ import annotations

import shutil
import time
from types import ModuleType
from typing import Protocol

from shared.settings import Settings
from worker.computer import ActionError, Observation, Target
from worker.desktop.display import Display
from worker.desktop.homes import pack_home
from worker.desktop.keys import to_x_keys, x_keysym
from worker.desktop.session import DesktopSession, spawn
from worker.desktop.windows import Windows
from worker.egress import Gate, chromium_proxy_args

WHEEL_PIXELS = 100
"""Scroll distance of one mouse-wheel click, in pixels: ``scroll`` sends ``round(dy / WHEEL_PIXELS)`` clicks (>= 1)."""

MULTI_CLICK_GAP = 0.03
"""Seconds between the clicks of a double or triple click: a human's rhythm (well inside every toolkit's double-click
time), which also leaves the window manager's click-to-focus grab time to hand each press on."""


class SessionHost(Protocol):
    """What a :class:`DesktopComputer` asks of the ``DesktopHost`` that opened it (each raises ``DesktopError``
    when the display is not running)."""

    @property
    def gui(self) -> ModuleType: ...
    @property
    def windows(self) -> Windows: ...
    def check_alive(self) -> Display: ...
    def capture(self, quality: int) -> bytes: ...
    def release(self, session: DesktopSession) -> None: ...
    @property
    def gate(self) -> Gate: ...


class DesktopComputer:
    """``Computer`` over one task's session on a ``DesktopHost`` display; coordinates are screen pixels.

    Elements cannot be found by name here (there is no accessibility tree): ``locate`` and ``select`` raise
    ``ActionError``, so agents act by coordinates and keys. ``navigate`` opens the URL in Chromium on the desktop.
    Every action raises ``DesktopError`` when Xvfb died under the task.
    """

    def __init__(self, host: SessionHost, session: DesktopSession, settings: Settings):
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

    def observe(self, accessibility: bool = True) -> Observation:
        """Screenshot, the last navigated URL, and the focused window's title as ``title``; never an
        accessibility tree (``accessibility`` is None)."""
        shot = self.screenshot()
        windows = self.host.windows
        window = windows.active_window()
        title = windows.title(window) if window is not None else ""
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
        """Two left clicks at (x, y) (see ``click``)."""
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
            self.host.check_alive().typer.type_char(char)
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
                self.host.check_alive().typer.press(keysym)
            else:
                gui.press(last)
        finally:
            for name in reversed(held):
                gui.keyUp(name)

    def move(self, x: int, y: int) -> None:
        """Move the pointer to (x, y)."""
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
        """Sleep ``seconds``."""
        time.sleep(seconds)

    def navigate(self, url: str) -> None:
        """Open ``url`` in Chromium on this desktop (started on first use with the browser worker's safe flags and a
        profile in the session's HOME); returns once a Chromium window exists.

        The URL is checked first; the pages Chromium loads afterwards go through the egress proxy like the rest of
        the session's HTTP(S) (a program that ignores proxy variables is not filtered: README, "Security").

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
        spawn(self.session, argv)
        timeout = max(self._settings.desktop_start_timeout, self._settings.action_timeout)
        windows = self.host.windows
        window = windows.wait_for(lambda w: "chromium" in windows.wm_class(w).lower(), timeout)
        if window is None:
            raise ActionError(f"Chromium showed no window within {timeout:.0f} s")
        windows.focus(window, 2.0)
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

    def save_state(self) -> bytes:
        """The session's HOME as a tar.gz (``worker/desktop/homes.py``: files and settings; no running programs).

        Raises:
            OSError: HOME cannot be read.
        """
        return pack_home(self.session.home)

    def close(self) -> None:
        """End of the task: the host resets the session unless it is persistent. Idempotent."""
        if not self._closed:
            self._closed = True
            self.host.release(self.session)
