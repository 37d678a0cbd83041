"""``DesktopHost``: a worker process's one X display and the one task session running on it.

The host starts the display lazily (the first task's viewport size), starts it again when a task wants another size
or when Xvfb died, restarts a dead window manager, hands each task a session (fresh, or the persistent one its
tenant left) wrapped in a :class:`~worker.desktop.computer.DesktopComputer`, and ends the session when the task
ends. The parts live beside it: ``display`` (Xvfb, Xauthority, window manager), ``windows`` (window queries, focus),
``session`` (HOME, marked processes), ``keys`` (key names, keysym typing).
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType

from shared.settings import Settings
from worker.desktop.computer import DesktopComputer
from worker.desktop.display import DesktopError, Display, start_display, start_wm, stop_display
from worker.desktop.session import DesktopSession, end_session, start_session
from worker.desktop.windows import Windows
from worker.egress import EgressPolicy, EgressProxy, EgressRules, Gate, process_proxy, proxy_env

log = logging.getLogger(__name__)


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
        self._display: Display | None = None
        self._session: DesktopSession | None = None
        self._busy = threading.Lock()
        self._gate: Gate | None = None

    @property
    def gate(self) -> Gate:
        """This display's gate of the egress proxy (its port stays the same, so a persistent session's programs keep
        reaching it); created on first use."""
        if self._gate is None or self._gate.closed:
            proxy = self._proxy or process_proxy(self.settings)
            self._gate = proxy.gate(EgressPolicy.from_settings(self.settings))
        return self._gate

    # -- the task's view -------------------------------------------------------------------------------------------
    def open(self, width: int, height: int, persistent: bool = False, owner: str = "",
             egress: EgressRules | None = None, state: bytes | None = None) -> DesktopComputer:
        """A ``Computer`` on this host's display at ``width`` x ``height`` pixels, in a fresh session (or the one a
        persistent task of the same ``owner`` (tenant) left, if the size matches; another tenant's persistent
        session is reset first: its windows, processes and HOME never reach another tenant).

        ``persistent``: when this task ends, keep its session (windows, processes, HOME) for the next task here.
        ``state``: a saved environment's HOME (``worker/desktop/homes.py``): the session is a fresh one whose HOME
        holds it (a session left on the slot is ended first).
        ``egress``: the task's rules on the egress proxy, in force until the task ends (None: the deployment's only).
        The session's programs get the proxy through their environment (``http_proxy`` ...).

        Raises:
            DesktopError: a task already holds the display, or the display / start-up program failed to start.
        """
        if not self._busy.acquire(blocking=False):
            raise DesktopError("this worker process's display is busy with another task (desktop workers need the "
                               "prefork or solo pool: one display per process)")
        try:
            d = self._ensure_display(width, height)
            session = self._session
            if session is not None and (session.owner != owner or state is not None):
                self._end_session(session)
                session = None
            if session is not None and session.display != d.number:
                session = None
            if session is not None:
                log.info("reusing the persistent desktop session on %s", d.name)
            else:
                session = self._session = start_session(d, self.settings, proxy_env(self.gate.url), state)
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

    # -- used by DesktopComputer -----------------------------------------------------------------------------------
    def check_alive(self) -> Display:
        """The running display.

        Raises:
            DesktopError: no display runs, or Xvfb died under the task (the task fails with exit code 5).
        """
        d = self._require()
        if d.xvfb.poll() is not None:
            raise DesktopError(f"the X display {d.name} died (Xvfb exited with code {d.xvfb.returncode})")
        return d

    @property
    def gui(self) -> ModuleType:
        """pyautogui, bound to this host's display (``DesktopError`` when no display runs)."""
        return self._require().gui

    @property
    def windows(self) -> Windows:
        """Window queries and focus on this host's display (``DesktopError`` when no display runs)."""
        return self._require().windows

    def capture(self, quality: int) -> bytes:
        """JPEG bytes (``quality`` 1-100) of the whole screen, at the display's size.

        Raises:
            DesktopError: no display runs, or Xvfb died.
        """
        return self.check_alive().capture(quality)

    # -- display and session lifecycle -----------------------------------------------------------------------------
    def _require(self) -> Display:
        if self._display is None:
            raise DesktopError("the desktop display is not running")
        return self._display

    def _ensure_display(self, width: int, height: int) -> Display:
        d = self._display
        if d is not None and (d.xvfb.poll() is not None or (d.width, d.height) != (width, height)):
            why = "Xvfb died" if d.xvfb.poll() is not None else f"the task wants {width}x{height}"
            log.info("restarting display %s (%dx%d): %s", d.name, d.width, d.height, why)
            if self._session is not None and self._session.persistent:
                log.warning("the persistent session on %s is lost: %s", d.name, why)
            self._stop_display()
        if self._display is None:
            self._display = start_display(self.settings, width, height)
        elif self._display.wm is not None and self._display.wm.poll() is not None:
            log.warning("window manager on %s died; starting it again", self._display.name)
            start_wm(self.settings, self._display)
        return self._display

    def _stop_display(self) -> None:
        d, self._display = self._display, None
        if d is None:
            return
        if self._session is not None:
            self._end_session(self._session)
        stop_display(d)

    def _end_session(self, session: DesktopSession) -> None:
        """Kill every process of ``session``, close windows left on the display, delete its HOME."""
        end_session(session, self._display, self.settings.desktop_kill_grace)
        if self._session is session:
            self._session = None
