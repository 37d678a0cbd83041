"""Keys on an X display: Playwright key names to pyautogui's X names, and typing what the keymap lacks.

``KEYS`` and :func:`to_x_keys` translate chords; :func:`x_keysym` names a key's X keysym; :class:`KeysymTyper`
types characters the display's keymap has no key for ("é", "✓", CJK, F13-F24 on Xvfb) by mapping their keysyms onto
spare keycodes (XTest). Nothing here starts a display: the typer is handed the host's X connection.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from worker.computer import ActionError

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


def char_keysym(char: str) -> int:
    """X keysym of one character: Latin-1 keysyms equal the code point, the rest are 0x01000000 + code point."""
    cp = ord(char)
    return cp if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF else 0x01000000 | cp


def x_keysym(name: str) -> int:
    """The X keysym of a pyautogui key name ("f13", "enter") or a single character; 0 when X has no such keysym."""
    if len(name) == 1:
        return char_keysym(name)
    from Xlib import XK

    for candidate in (name, name.capitalize(), name.upper()):
        keysym = XK.string_to_keysym(candidate)
        if keysym:
            return int(keysym)
    return 0


class KeysymTyper:
    """Types characters the keymap lacks by mapping their keysyms onto spare keycodes, then pressing those (XTest).

    xdotool does the same per character and re-maps one scratch keycode immediately, so a client that reads the
    keymap late types the wrong character (measured: 2 of 5 lines of "héllo ✓ ñü 日本語" intact at its default
    12 ms delay). Here a mapping stays in place until its keycode is the least recently used of the spare pool and
    has not been pressed for ``settle`` seconds, so every key event a client reads still means its character.

    ``conn`` is an ``Xlib.display.Display`` on the display (not pyautogui's: the typer syncs it after every change).
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
        """Press and release ``keysym`` on a spare keycode (modifiers already held stay held).

        Raises:
            ActionError: the keymap has no spare keycode at all.
        """
        from Xlib import X
        from Xlib.ext.xtest import fake_input

        keycode = self._keycode(keysym)
        fake_input(self._conn, X.KeyPress, keycode)
        fake_input(self._conn, X.KeyRelease, keycode)
        self._conn.sync()
        self._used_at[keycode] = time.monotonic()

    def type_char(self, char: str) -> None:
        """Type one character (see :meth:`press`)."""
        self.press(char_keysym(char))
