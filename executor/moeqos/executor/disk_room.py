"""Room on the variant cache's filesystem: measured when files are about to be written, not once at start.

`check_writable` answers at start-up whether a cache directory can be created and written (a clear
configuration error instead of a traceback at the first write). `check_room` refuses a batch of new
files the filesystem cannot hold, before any is written, with OverBudget (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from moeqos.core.errors import OverBudget

HEADROOM_BYTES = 64 << 20
"""Left free beyond the files themselves (headers, the profile, other writers, the OS)."""


def free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem that holds `directory` (or would, once created)."""
    return shutil.disk_usage(_nearest_existing(directory)).free


def check_room(directory: Path, needed: int, what: str) -> None:
    """OverBudget unless `needed` more bytes (plus headroom) fit on `directory`'s filesystem now."""
    if needed <= 0:
        return
    free = free_bytes(directory)
    if needed + HEADROOM_BYTES > free:
        raise OverBudget(
            f"{what} needs {needed} B of new variant files; the cache's filesystem has {free} B free "
            f"(keeping {HEADROOM_BYTES} B in reserve)"
        )


MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
"""Filesystems whose files are held in RAM: files written there are memory, not disk."""


def filesystem_type(directory: Path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem that holds `directory` (the longest mount point above it), or None
    where the mount table cannot be read (not Linux)."""
    path = _nearest_existing(directory).resolve()
    try:
        with open(mounts) as table:
            entries = [line.split() for line in table]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for fields in entries:
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and (best is None or len(point.parts) > best[0]):
            best = (len(point.parts), fields[2])
    return best[1] if best else None


def check_writable(directory: Path) -> None:
    """ValueError unless `directory` exists as a writable directory or can be created as one."""
    base = _nearest_existing(directory)
    if not base.is_dir():
        raise ValueError(f"variant cache {directory}: {base} is not a directory")
    try:  # a real write: permissions alone miss read-only filesystems (and root passes every check)
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise ValueError(f"variant cache {directory}: cannot write in {base} ({exc.strerror})") from None


def _nearest_existing(directory: Path) -> Path:
    path = Path(os.path.abspath(directory))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
