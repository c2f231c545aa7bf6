"""Whether another process still runs: how the executor tells a crashed writer's leftovers (temp files,
scratch directories) from files another live process is writing."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while a process with this id exists (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
