"""A desktop session's HOME as a saved environment: packed into a tar.gz when a persistent task completes, unpacked
into the next session's fresh HOME before its start-up program runs (``worker/environments.py``).

What travels: every regular file, folder and relative symlink under HOME (the agent's files, the programs' settings
in dot-files and ``~/.config``, ``~/.local/share``, the desktop Chromium's profile), with their modes. What does not:
caches that programs rebuild (Chromium's ``Cache``, ``Code Cache``, ``GPUCache`` ...; ``~/.cache``), sockets, FIFOs,
devices, Chromium's ``Singleton*`` locks, and symlinks that leave HOME. Running programs, their windows and the
window manager's state are not saved: the next task starts the start-up program afresh in the restored HOME.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

SKIPPED_DIRS = frozenset({"Cache", "Code Cache", "GPUCache", "ShaderCache", "GrShaderCache", "GraphiteDawnCache",
                          "DawnCache", "DawnGraphiteCache", "DawnWebGPUCache", "Crashpad", "CacheStorage"})
"""Folder names (anywhere under HOME) whose contents are caches, left out of a saved HOME."""
SKIPPED_TOP = frozenset({".cache", ".Xauthority", ".xsession-errors"})
"""Entries directly in HOME left out (caches, the X session's own files)."""


def _keep(info: tarfile.TarInfo | None) -> tarfile.TarInfo | None:
    if info is None:  # a socket: tarfile has no type for it
        return None
    parts = Path(info.name).parts  # "./.cache/x" -> (".cache", "x")
    name = parts[-1] if parts else ""
    if len(parts) == 1 and name in SKIPPED_TOP:
        return None
    if name in SKIPPED_DIRS or name.startswith("Singleton"):
        return None
    if info.issym():
        target = Path(info.linkname)
        if target.is_absolute() or ".." in target.parts:
            return None
    elif not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_home(home: Path) -> bytes:
    """The tar.gz of ``home`` (see the module's docstring for what is left out); members are relative ("./...").
    Files that vanish or cannot be read while packing are left out.

    Raises:
        OSError: ``home`` cannot be read at all.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        tar.add(home, arcname=".", recursive=False)
        _add_tree(tar, home, Path("."))
    return buf.getvalue()


def _add_tree(tar: tarfile.TarFile, folder: Path, arc: Path) -> None:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        name = arc / entry.name
        try:
            info = tar.gettarinfo(str(entry), arcname=str(name))
        except OSError:  # vanished, or unreadable
            continue
        kept = _keep(info)
        if kept is None:
            continue
        if kept.isfile():
            try:
                with entry.open("rb") as f:
                    tar.addfile(kept, f)
            except OSError:
                continue
        else:
            tar.addfile(kept)
            if kept.isdir():
                _add_tree(tar, entry, name)


def unpack_home(home: Path, data: bytes) -> None:
    """Unpack a :func:`pack_home` archive into ``home`` (an empty, new HOME). Members that would land outside
    ``home``, links out of it and special files are refused (tarfile's ``data`` filter).

    Raises:
        tarfile.TarError: ``data`` is not such an archive, or holds a member the filter refuses.
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(home, filter="data")
