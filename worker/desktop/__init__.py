"""The desktop implementation of ``Computer``: one Xvfb display per worker process, driven with pyautogui.

A ``DesktopHost`` (``host``) lives as long as its worker process (slot) and owns one X display (``display``): Xvfb on
the first free number in ``desktop_display_min..max``, started at the first task's viewport size and again for
another size or when Xvfb died; only clients presenting its MIT-MAGIC-COOKIE-1 may connect. A light window manager
(openbox by default) gives new windows the keyboard focus (``windows``). One host per process, one task per host.

Each task runs in a *session* (``session``): a fresh HOME, the start-up program (xterm by default) with the keyboard
focus, and every process it starts marked with ``LODESTAR_DESKTOP_SESSION=<token>``; ending the session kills them,
closes windows left and deletes HOME, unless the task was ``persistent`` (then the tenant's next task on the slot
gets it). Session programs get a minimal environment (no ``LODESTAR_*`` secrets of the worker) that points HTTP(S)
at the worker's egress proxy (``worker/egress/``: one gate per host, with the running task's rules); a program that
ignores proxy variables is not filtered (README, "Security"). ``DesktopComputer`` (``computer``) acts in screen pixels;
``keys`` types what the keymap lacks.
"""

from __future__ import annotations

from worker.desktop.computer import MULTI_CLICK_GAP, WHEEL_PIXELS, DesktopComputer
from worker.desktop.display import DesktopError
from worker.desktop.host import DesktopHost
from worker.desktop.keys import KEYS, to_x_keys, x_keysym
from worker.desktop.session import SESSION_ENV, DesktopSession, session_pids

__all__ = ["KEYS", "MULTI_CLICK_GAP", "SESSION_ENV", "WHEEL_PIXELS", "DesktopComputer", "DesktopError", "DesktopHost",
           "DesktopSession", "session_pids", "to_x_keys", "x_keysym"]
