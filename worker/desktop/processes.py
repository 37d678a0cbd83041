"""Processes of a desktop host (Xvfb, the window manager, session programs): start guard, liveness, stopping.

Linux only: liveness is read from ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path


def orphan_guard() -> list[str]:
    """A command prefix that kills the child when this worker process dies (``setpriv --pdeathsig``), if available;
    ``[]`` otherwise."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a /proc entry we may not read counts as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def send_signal(pid: int, sig: int) -> None:
    """``os.kill(pid, sig)``, quietly doing nothing when the process is gone or not ours."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 2.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds, and reap it (None: nothing to do)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
