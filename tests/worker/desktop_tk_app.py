"""A tiny Tk program for the desktop tests: full screen, it writes what was done to it into a JSON file.

Usage: ``python desktop_tk_app.py STATE.json``

- A "+1" button is drawn at (100, 100)-(300, 200) screen pixels: each left click inside it adds 1 to ``count``.
- Every mouse click anywhere is appended to ``clicks`` as ``[x, y, button]`` (screen pixels).
- Typed characters build ``text``; Return moves it to ``lines``; BackSpace deletes one; Control+s sets ``saved``;
  other keys that type nothing (arrows, F-keys...) are appended to ``keys`` by keysym name (modifiers excepted),
  and the title becomes "tk-key <keysym>" once that is saved, so a script can ``expect`` its last key was handled.
- Once the window covers the whole screen its title becomes "tk-ready WxH", so a script can ``expect "tk-ready"``.

The state file is replaced atomically after every change (``ready``, ``count``, ``clicks``, ``text``, ``lines``,
``keys``, ``saved``, ``screen``).
"""

from __future__ import annotations

import json
import os
import sys
import tkinter as tk
from typing import Any

BUTTON = (100, 100, 300, 200)


def main(path: str) -> None:
    root = tk.Tk()
    root.title("tk-starting")
    screen = [root.winfo_screenwidth(), root.winfo_screenheight()]
    state: dict[str, Any] = {"ready": False, "count": 0, "clicks": [], "text": "", "lines": [], "keys": [],
                             "saved": False, "screen": screen}

    def save() -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, ensure_ascii=False)
        os.replace(tmp, path)

    canvas = tk.Canvas(root, highlightthickness=0, background="white")
    canvas.pack(fill="both", expand=True)
    canvas.create_rectangle(*BUTTON, fill="#4a7", outline="")
    canvas.create_text((BUTTON[0] + BUTTON[2]) // 2, (BUTTON[1] + BUTTON[3]) // 2, text="+1", font=("", 24))
    label = canvas.create_text(400, 300, text="", font=("", 18), anchor="w")

    def on_click(event: tk.Event) -> None:
        state["clicks"].append([event.x_root, event.y_root, event.num])
        if event.num == 1 and BUTTON[0] <= event.x_root < BUTTON[2] and BUTTON[1] <= event.y_root < BUTTON[3]:
            state["count"] += 1
        save()

    def on_key(event: tk.Event) -> None:
        key = ""
        if event.keysym == "Return":
            state["lines"].append(state["text"])
            state["text"] = ""
        elif event.keysym == "BackSpace":
            state["text"] = state["text"][:-1]
        elif event.char and event.char.isprintable():
            state["text"] += event.char
        elif not event.keysym.startswith(("Shift", "Control", "Alt", "Super", "Meta")):
            key = event.keysym
            state["keys"].append(key)
        else:
            return
        canvas.itemconfigure(label, text=state["text"])
        save()
        if key:  # after the save: a script that sees the title finds the key in the state file
            root.title(f"tk-key {key}")

    def on_save(_: tk.Event) -> None:
        state["saved"] = True
        save()

    def on_configure(_: tk.Event) -> None:
        covers = [root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height()] == [0, 0, *screen]
        if covers and not state["ready"]:
            state["ready"] = True
            save()
            root.title(f"tk-ready {screen[0]}x{screen[1]}")

    canvas.bind("<Button>", on_click)
    root.bind("<Key>", on_key)
    root.bind("<Control-s>", on_save)
    root.bind("<Configure>", on_configure)
    root.attributes("-fullscreen", True)
    save()
    root.mainloop()


if __name__ == "__main__":
    main(sys.argv[1])
