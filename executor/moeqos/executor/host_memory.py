"""Give freed host memory back to the OS after a plan switch.

A switch frees the replaced experts' tensors (tens of MB to GB), which were allocated on worker threads
by glibc malloc. glibc keeps freed heap pages in its per-thread arenas, and raises its mmap threshold
after large frees, so later experts come from those arenas too: the process's RSS ratchets up with
each switch although nothing references the memory any more. `malloc_trim(0)` returns the free pages
of every arena. A no-op where the C library has no `malloc_trim` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return freed heap memory to the OS; False where that is not possible here."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
