"""The OS threads the executor runs torch on, chosen so that torch's OpenMP stays fast.

Why this matters: libgomp (the OpenMP runtime torch's CPU build uses) keeps one thread team per OS
thread that has run a parallel region, alive until that thread exits. Once the threads of all live
teams outnumber the CPUs it stops spinning between regions and parks its workers (its "throttled"
spin count), so every parallel op then pays a wake-up. A decode step of the default model is a few
hundred small ops: measured on the 2-core machine, a second pool thread that had run one torch op made
the next decode steps 1.7-2x slower (served 13.8 against 25.7 tok/s in process), and a pool that ran
each step on whichever of its threads was free kept several teams alive for good.

So the executor runs torch in two ways:
- `decoding_thread()`: one long-lived thread for the work that must be fast and is timed as served
  work: the model load, every decode step of every stream, and profile measurements (so a profile
  times steps as they are served; generations wait while one is measured). Its team is made once and
  stays warm.
- `ThreadPerCall`: everything else (plan switches, evaluations, which serve their own plan beside the
  generations and must not wait for them, tidying up after a cancelled stream) runs on a thread made
  for that call, which exits when the call returns, so its OpenMP team goes with it and does not slow
  the decode steps afterwards.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def decoding_thread() -> ThreadPoolExecutor:
    """The executor's one thread for model loading, decode steps and profile measurements."""
    return ThreadPoolExecutor(1, thread_name_prefix="executor-decode")


class ThreadPerCall(Executor):
    """An Executor that runs each call on a new daemon thread which exits when the call returns
    (module docstring: a thread that ends takes its OpenMP team with it)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._live: set[threading.Thread] = set()
        self._shut = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()

        def call() -> None:
            try:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    result = fn(*args, **kwargs)
                except BaseException as error:  # handed to the caller through the future
                    future.set_exception(error)
                else:
                    future.set_result(result)
            finally:
                with self._lock:
                    self._live.discard(threading.current_thread())

        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            thread = threading.Thread(target=call, name=f"{self._name}-{next(self._numbers)}", daemon=True)
            self._live.add(thread)
        thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with `wait`, wait for the calls running now. (Nothing is ever queued, so
        `cancel_futures` has nothing to cancel.)"""
        with self._lock:
            self._shut = True
            live = list(self._live)
        if wait:
            for thread in live:
                thread.join()
