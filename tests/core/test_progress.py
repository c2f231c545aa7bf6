"""The heartbeat on stderr for long waits (moeqos.core.progress): silent when short, a line every few
seconds in a log, a spinner on a terminal, and a closing line either way."""

from __future__ import annotations

import io
import time

import pytest
from moeqos.core import progress


def test_a_wait_shorter_than_the_threshold_is_silent_and_a_longer_one_is_not():
    quiet, loud = io.StringIO(), io.StringIO()
    with progress.waiting("quick", after=5.0, stream=quiet):
        pass
    with progress.waiting("slow", after=0.05, every=0.05, stream=loud):
        time.sleep(0.4)
    lines = loud.getvalue().splitlines()
    assert quiet.getvalue() == ""
    assert lines[0].startswith("slow... (") and len(lines) >= 3 and lines[-1].startswith("slow: done after")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with pytest.raises(RuntimeError), progress.waiting("spin", after=0.0, stream=terminal):
        time.sleep(0.5)
        raise RuntimeError("the wait failed")
    frames = terminal.getvalue().split("\r\033[K")
    assert (
        len(frames) >= 3 and frames[1].startswith("| spin (") and frames[-1].startswith("spin: stopped after")
    )
