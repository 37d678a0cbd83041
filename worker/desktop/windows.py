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

    def has_focus(self, window: Any) -> bool:
        """True when the X server's keyboard focus is on ``window`` or inside it: where typed keys go now (the WM's
        ``_NET_ACTIVE_WINDOW`` may lag behind, or still name a window that is gone and whose X id is reused)."""
        from Xlib import error

        try:
            focus = self.conn.get_input_focus().focus
            while not isinstance(focus, int) and focus.id not in (0, self.root.id):
                if focus.id == window.id:
                    return True
                focus = focus.query_tree().parent
        except error.XError:
            pass
        return False

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

    def pid(self, window: Any) -> int | None:
        """The process id the window's client announced (``_NET_WM_PID``); None when unset or the window is gone."""
        from Xlib import X, error

        try:
            prop = window.get_full_property(self.atoms["_NET_WM_PID"], X.AnyPropertyType)
        except error.XError:
            return None
        return int(prop.value[0]) if prop and len(prop.value) else None

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

    def focused(self, window: Any) -> bool:
        """True when typed keys go to ``window`` (:meth:`has_focus`) and, with EWMH, the WM names it active (what
        ``active_window`` and so the observed title report)."""
        if not self.has_focus(window):
            return False
        active = self.active_window() if self.ewmh else window
        return active is not None and active.id == window.id

    def focus(self, window: Any, timeout: float) -> bool:
        """Give ``window`` the keyboard focus and wait until it has it (:meth:`focused`), polling every 20 ms.

        The WM usually focuses a new window itself; when it has not after 1 s (at once without EWMH), ask the WM
        (``_NET_ACTIVE_WINDOW``) and the X server directly, again every 0.5 s (a window the WM has not mapped yet
        cannot take the focus). Returns True once focused, False after ``timeout`` seconds or once it is gone.
        """
        start = time.monotonic()
        ask_at = start + (min(timeout, 1.0) if self.ewmh else 0.0)
        while not self.focused(window):
            now = time.monotonic()
            if now >= start + timeout:
                return False
            if now >= ask_at:
                if not self._ask_focus(window):
                    return False
                ask_at = now + 0.5
            time.sleep(0.02)
        return True

    def _ask_focus(self, window: Any) -> bool:
        """Ask the WM and the X server to focus ``window``; False when the window is gone."""
        from Xlib import X, error
        from Xlib.protocol import event

        try:
            window.get_attributes()
        except error.XError:
            return False
        if self.ewmh:
            request = event.ClientMessage(window=window, client_type=self.atoms["_NET_ACTIVE_WINDOW"],
                                          data=(32, [2, X.CurrentTime, 0, 0, 0]))
            self.root.send_event(request, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask,
                                 onerror=error.CatchError())
        window.set_input_focus(X.RevertToParent, X.CurrentTime, onerror=error.CatchError())  # unmapped: BadMatch
        window.configure(stack_mode=X.Above, onerror=error.CatchError())
        self.conn.sync()
        return True
