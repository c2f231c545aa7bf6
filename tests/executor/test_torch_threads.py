"""The executor's torch threads (moeqos.executor.torch_threads): a call on ThreadPerCall runs on a
thread of its own that has exited once the call is done, results and errors come back through the
future, and a shut-down pool refuses new calls."""

from __future__ import annotations

import threading

import pytest
from moeqos.executor.torch_threads import ThreadPerCall, decoding_thread


def test_each_call_runs_on_a_new_thread_that_ends_with_it() -> None:
    pool = ThreadPerCall("test")
    seen = [pool.submit(threading.current_thread).result(timeout=5) for _ in range(3)]
    assert len(set(seen)) == 3
    assert all(
        thread.name.startswith("test-") and thread is not threading.current_thread() for thread in seen
    )
    for thread in seen:
        thread.join(timeout=5)
        assert not thread.is_alive()
    pool.shutdown()


def test_results_and_errors_come_back_through_the_future() -> None:
    pool = ThreadPerCall("test")
    assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=5) == 5

    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        pool.submit(fails).result(timeout=5)
    pool.shutdown()


def test_shutdown_waits_for_running_calls_and_then_refuses() -> None:
    pool = ThreadPerCall("test")
    release, done = threading.Event(), []

    def waits_then_records() -> None:
        release.wait(5)
        done.append(True)

    pool.submit(waits_then_records)
    threading.Timer(0.1, release.set).start()
    pool.shutdown(wait=True)
    assert done == [True]
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(print)


def test_the_decoding_thread_is_one_thread_for_every_call() -> None:
    decoding = decoding_thread()
    idents = {decoding.submit(threading.get_ident).result(timeout=5) for _ in range(5)}
    assert len(idents) == 1 and threading.get_ident() not in idents
    decoding.shutdown()
