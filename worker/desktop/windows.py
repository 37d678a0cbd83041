"""Top-level windows of one X display, seen through our own Xlib connection: listing, titles, classes, focus.

With an EWMH window manager (``Windows.ewmh``) windows are listed (``_NET_CLIENT_LIST``) and focused
(``_NET_ACTIVE_WINDOW``) through it; without one, the mapped children of the root window are the windows and the X
server's input focus is the active one. Windows are ``Xlib.display.Window`` objects; one that is gone raises
``Xlib.error.XError`` on use, which the queries here turn into "no such window" answers.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from typing import Any

ATOMS = ("_NET_ACTIVE_WINDOW", "_NET_CLIENT_LIST", "_NET_SUPPORTING_WM_CHECK", "_NET_WM_NAME", "UTF8_STRING",
         "_NET_WM_PID")
"""The atoms the queries use, interned once per connection."""


class Windows:
    """Window queries and focus over ``conn`` (an ``Xlib.display.Display``), not thread-safe (one task at a time)."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.atoms: dict[str, int] = {a: conn.intern_atom(a) for a in ATOMS}
        self.ewmh = False
        """The window manager announced itself (EWMH): windows are listed and focused through it."""

    @property
    def root(self) -> Any:
        """The screen's root window."""
        return self.conn.screen().root

    def wm_announced(self) -> bool:
        """True once an EWMH window manager set ``_NET_SUPPORTING_WM_CHECK`` on the root window."""
        return self.root.get_full_property(self.atoms["_NET_SUPPORTING_WM_CHECK"], 0) is not None

    def client_ids(self) -> list[int]:
        """X ids of the windows in the window manager's ``_NET_CLIENT_LIST`` (``[]`` when it has none)."""
        from Xlib import X

        prop = self.root.get_full_property(self.atoms["_NET_CLIENT_LIST"], X.AnyPropertyType)
        return list(prop.value) if prop else []

    def client_windows(self) -> list[Any]:
        """Top-level application windows on the display (EWMH client list, else mapped children of the root)."""
        from Xlib import X, error

        if self.ewmh:
            return [self.conn.create_resource_object("window", w) for w in self.client_ids()]
        windows = []
        for w in self.root.query_tree().children:
            with contextlib.suppress(error.XError):
                attrs = w.get_attributes()
                if attrs.map_state == X.IsViewable and not attrs.override_redirect:
                    windows.append(w)
        return windows

    def active_window(self) -> Any | None:
        """The window with the keyboard focus (per the window manager, else the X server); None when none has."""
        from Xlib import X

        if not self.ewmh:
            focus = self.conn.get_input_focus().focus
            return None if isinstance(focus, int) or focus.id == self.root.id else focus
        prop = self.root.get_full_property(self.atoms["_NET_ACTIVE_WINDOW"], X.AnyPropertyType)
        if not prop or not prop.value or not prop.value[0]:
            return None
        return self.conn.create_resource_object("window", prop.value[0])

    def title(self, window: Any) -> str:
        """A window's title (``_NET_WM_NAME``, else ``WM_NAME``); "" when it has none or is gone."""
        from Xlib import error

        try:
            prop = window.get_full_property(self.atoms["_NET_WM_NAME"], self.atoms["UTF8_STRING"])
            if prop and prop.value:
                value = prop.value
                return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            name = window.get_wm_name()
            return name.decode("latin-1") if isinstance(name, bytes) else (name or "")
        except error.XError:
            return ""

    @staticmethod
    def wm_class(window: Any) -> str:
        """``"instance class"`` of a window's WM_CLASS ("" when unknown or gone)."""
        from Xlib import error

        try:
            return " ".join(window.get_wm_class() or ())
        except error.XError:
            return ""

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float,
                 watch: subprocess.Popen[bytes] | None = None) -> Any | None:
        """Poll (every 20 ms) until a client window satisfies ``predicate``; returns it, or None after ``timeout``
        seconds or when ``watch`` exits first."""
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
        from Xlib import X, error
        from Xlib.protocol import event

        deadline = time.monotonic() + min(timeout, 1.0)
        while self.ewmh and time.monotonic() < deadline:
            active = self.active_window()
            if active is not None and active.id == window.id:
                return
            time.sleep(0.02)
        with contextlib.suppress(error.XError):
            if self.ewmh:
                request = event.ClientMessage(window=window, client_type=self.atoms["_NET_ACTIVE_WINDOW"],
                                              data=(32, [2, X.CurrentTime, 0, 0, 0]))
                self.root.send_event(request, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
            window.set_input_focus(X.RevertToParent, X.CurrentTime)
            window.configure(stack_mode=X.Above)
            self.conn.sync()
