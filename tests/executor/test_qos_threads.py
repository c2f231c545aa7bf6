"""The QoS loop's thread actuator with a fake clock and injected CPU readings and step costs: other
processes' CPU share, the thread policy (lower under a neighbour, raise after it, judge each change by
its measured effect, undo a slower one and back off), the loop counting only steps at the count in
force, and the knob reaching the thread that runs a step (torch keeps the count per OS thread)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from moeqos.api.channel import ConnectOptions
from moeqos.core.precision import Precision
from moeqos.core.qos import QosTarget
from moeqos.core.service_types import LiveCalibration, QosState
from moeqos.executor.cpu_share import CpuShare, machine_busy_seconds
from moeqos.executor.live_stats import LiveStats
from moeqos.executor.metrics import ExecutorMetrics
from moeqos.executor.qos_control import LoopSettings
from moeqos.executor.qos_loop import QosLoop
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.service_measure import MeasureSettings
from moeqos.executor.service_model import ServedModel
from moeqos.executor.service_target import StandingTarget
from moeqos.executor.thread_knob import ThreadKnob, ThreadPolicy, ThreadSettings
from prometheus_client import CollectorRegistry

from tests.executor.test_qos_loop import BF16, FakeClock, Hooks, feed, profile


class Machine:
    """Fake CPU counters: other processes burn `others` cores, this one `own` cores."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.others, self.own = clock, 0.0, 1.0
        self.machine_s, self.own_s, self.last = 0.0, 0.0, clock.now

    def advance(self) -> None:
        wall = self.clock.now - self.last
        self.machine_s += wall * (self.others + self.own)
        self.own_s += wall * self.own
        self.last = self.clock.now

    def share(self) -> CpuShare:
        def machine() -> float:
            self.advance()
            return self.machine_s

        def own() -> float:
            self.advance()
            return self.own_s

        return CpuShare(self.clock, machine, own, cores=2)


# ----- CPU share ----------------------------------------------------------------------------------
def test_cpu_share_is_the_machine_minus_this_process_over_the_window() -> None:
    clock = FakeClock()
    machine = Machine(clock)
    share = machine.share()
    share.sample()
    assert share.others_cores(2.0) is None  # one sample: nothing known
    machine.others = 1.0
    for _ in range(4):
        clock.now += 0.5
        share.sample()
    assert share.others_cores(2.0) == pytest.approx(1.0)
    machine.others = 0.0
    clock.now += 1.0
    share.sample()
    assert share.others_cores(2.0) == pytest.approx(0.5)  # half the window with the neighbour
    clock.now += 1.0
    share.sample()
    assert share.others_cores(2.0) == pytest.approx(0.0)


def test_cpu_share_without_proc_stat_knows_nothing() -> None:
    assert machine_busy_seconds("/nonexistent/stat") is None
    share = CpuShare(FakeClock(), lambda: None, lambda: 1.0, cores=2)
    share.sample()
    share.sample()
    assert share.others_cores(1.0) is None


# ----- the policy ---------------------------------------------------------------------------------
def rates(table: dict[int, float | None]):  # type: ignore[no-untyped-def]
    return lambda threads, since, need: table.get(threads)


def test_policy_lowers_under_a_neighbour_raises_after_it_and_keeps_a_faster_change() -> None:
    policy = ThreadPolicy(ThreadSettings(interval_s=2.0), cores=2)
    assert policy.decide(0.0, 0.2, 2, 2, rates({2: 10.0})) is None  # quiet: 2 threads stay
    lower = policy.decide(1.0, 1.1, 2, 2, rates({2: 4.0}))
    assert lower is not None and lower.threads == 1 and "1.10 of 2 cores" in lower.reason
    assert policy.decide(1.5, 1.1, 1, 2, rates({2: 4.0})) is None  # not judged yet: no steps at 1
    kept = policy.decide(2.0, 1.1, 1, 2, rates({1: 7.0, 2: 4.0}))
    assert kept is not None and kept.threads is None and "4.00 -> 7.00 tok/s" in kept.reason
    assert policy.decide(2.5, 0.1, 1, 2, rates({1: 7.0})) is None  # within interval_s of the change
    raised = policy.decide(3.5, 0.1, 1, 2, rates({1: 7.0}))
    assert raised is not None and raised.threads == 2
    assert policy.decide(3.5, 0.1, 2, 2, rates({1: 7.0})) is None  # until 2-thread steps come


def test_a_short_look_takes_threads_away_and_only_the_long_one_gives_them_back() -> None:
    policy = ThreadPolicy(ThreadSettings(interval_s=2.0), cores=2)
    lower = policy.decide(0.0, 0.4, 2, 2, rates({2: 10.0}), recent=0.9)  # a neighbour for half a second
    assert lower is not None and lower.threads == 1 and "0.90 of 2 cores" in lower.reason
    assert policy.decide(1.0, 0.9, 1, 2, rates({1: 9.0, 2: 10.0})).threads is None  # type: ignore[union-attr]
    assert policy.decide(5.0, 0.8, 1, 2, rates({1: 9.0}), recent=0.1) is None  # it left: not yet
    raised = policy.decide(7.0, 0.3, 1, 2, rates({1: 9.0}), recent=0.1)
    assert raised is not None and raised.threads == 2


def test_a_change_measured_slower_within_the_noise_is_kept() -> None:
    policy = ThreadPolicy(ThreadSettings(interval_s=1.0, tolerance=0.15), cores=2)
    assert policy.decide(0.0, 0.1, 1, 2, rates({1: 37.0})).threads == 2  # type: ignore[union-attr]
    kept = policy.decide(1.0, 0.1, 2, 2, rates({1: 37.0, 2: 34.3}))  # 7% slower: noise, not harm
    assert kept is not None and kept.threads is None and "slower" not in kept.reason


def test_policy_never_goes_above_the_starting_count_nor_below_one() -> None:
    policy = ThreadPolicy(ThreadSettings(), cores=8)
    assert policy.decide(0.0, 0.0, 4, 4, rates({})) is None  # 8 free cores, started with 4
    low = policy.decide(0.0, 8.0, 4, 4, rates({}))
    assert low is not None and low.threads == 1


def test_policy_undoes_a_slower_change_and_does_not_retry_it_before_the_backoff() -> None:
    policy = ThreadPolicy(ThreadSettings(interval_s=1.0, backoff_s=30.0), cores=2)
    assert policy.decide(0.0, 1.0, 2, 2, rates({2: 8.0})).threads == 1  # type: ignore[union-attr]
    undo = policy.decide(1.0, 1.0, 1, 2, rates({1: 5.0, 2: 8.0}))
    assert undo is not None and undo.threads == 2 and "slower" in undo.reason
    for now in (3.0, 10.0, 30.0):
        assert policy.decide(now, 1.0, 2, 2, rates({2: 8.0})) is None
    again = policy.decide(31.5, 1.0, 2, 2, rates({2: 8.0}))
    assert again is not None and again.threads == 1


def test_policy_leaves_a_change_unjudged_when_nothing_decodes() -> None:
    policy = ThreadPolicy(ThreadSettings(judge_timeout_s=10.0), cores=2)
    assert policy.decide(0.0, 1.0, 2, 2, rates({})).threads == 1  # type: ignore[union-attr]
    assert policy.decide(5.0, 0.0, 1, 2, rates({})) is None
    note = policy.decide(10.5, 0.0, 1, 2, rates({}))
    assert note is not None and note.threads is None and "not judged" in note.reason
    assert policy.decide(11.0, 0.0, 1, 2, rates({})).threads == 2  # type: ignore[union-attr]


# ----- the loop with the knob ---------------------------------------------------------------------
def test_the_loop_lowers_threads_under_a_neighbour_and_judges_only_steps_at_the_new_count() -> None:
    clock = FakeClock()
    machine = Machine(clock)
    applied: list[int] = []
    knob = ThreadKnob(2, applied.append, lambda: applied[-1] if applied else 2)
    target = StandingTarget("", ConnectOptions(), Hooks())
    target.set(QosTarget(min_tokens_per_s=8.0), "")
    stats = LiveStats(lambda: BF16, clock, threads=lambda: knob.wanted)
    loop = QosLoop(LoopSettings(), stats, target, lambda: BF16, lambda: knob, machine.share())
    feed(stats, clock, 0.1, 30)  # 10 tok/s on 2 threads, quiet
    loop.tick(profile())
    assert knob.wanted == 2
    machine.others = 1.0  # the neighbour: 2 threads fall to 4 tok/s
    ticks = 0
    while knob.wanted == 2 and ticks < 8:
        feed(stats, clock, 0.25, 2)
        decision = loop.tick(profile())
        ticks += 1
    assert ticks <= 2  # within 1 s of the neighbour's start
    assert knob.wanted == 1 and "2 -> 1 threads" in loop.thread_note
    # Right after the change no step is at 1 thread: the 4 tok/s of 2 threads are not judged.
    assert decision.state is QosState.MET and loop.window().tokens == 0
    feed(stats, clock, 1 / 9.0, 16)  # 1 thread beside the neighbour: 9 tok/s
    decision = loop.tick(profile())
    assert knob.wanted == 1 and "4.00 -> 9.00 tok/s" in loop.thread_note
    assert decision.state is QosState.MET and loop.window().stream_tokens_per_s == pytest.approx(9.0)
    assert loop.calibration.steps == 16  # fitted to the steps at 1 thread only
    assert "1 threads" in loop.status(profile()).last_decision
    knob.apply()
    assert applied == [1]


def test_back_at_a_thread_count_the_loop_fits_only_steps_taken_since() -> None:
    """Steps at 2 threads beside a neighbour (4 tok/s) are not what 2 threads do once it has left:
    a thread change forgets the live calibration, and the fit takes only steps after the change."""
    clock = FakeClock()
    machine = Machine(clock)
    knob = ThreadKnob(2, lambda n: None, lambda: knob.wanted)
    target = StandingTarget("", ConnectOptions(), Hooks())
    target.set(QosTarget(min_tokens_per_s=8.0), "")
    stats = LiveStats(lambda: BF16, clock, threads=lambda: knob.wanted)
    loop = QosLoop(LoopSettings(), stats, target, lambda: BF16, lambda: knob, machine.share())
    loop.tick(profile())

    def tick_until(threads: int, seconds: float) -> None:
        for _ in range(10):
            feed(stats, clock, seconds, 4)
            loop.tick(profile())
            if knob.wanted == threads:
                return
        raise AssertionError(f"the loop never went to {threads} threads")

    machine.others = 1.0
    tick_until(1, 0.25)  # 2 threads beside the neighbour: 4 tok/s
    feed(stats, clock, 1 / 9.0, 27)  # 1 thread: 9 tok/s
    loop.tick(profile())
    assert loop.calibration.steps > 0
    machine.others = 0.0
    tick_until(2, 1 / 9.0)
    assert loop.calibration == LiveCalibration()  # nothing at 2 threads since the change
    feed(stats, clock, 0.1, 16)  # 2 threads, the neighbour gone: 10 tok/s
    loop.tick(profile())
    assert loop.calibration.steps == 16  # the 4 tok/s steps at 2 threads are not among them


def test_the_open_loop_never_touches_the_threads() -> None:
    clock = FakeClock()
    machine = Machine(clock)
    knob = ThreadKnob(2, lambda n: None, lambda: 2)
    target = StandingTarget("", ConnectOptions(), Hooks())
    stats = LiveStats(lambda: BF16, clock, threads=lambda: knob.wanted)
    loop = QosLoop(LoopSettings(enabled=False), stats, target, lambda: BF16, lambda: knob, machine.share())
    machine.others = 1.0
    for _ in range(10):
        feed(stats, clock, 0.25, 2)
        loop.tick(profile())
    assert knob.wanted == 2 and loop.thread_note == ""


# ----- the knob reaches the stepping thread ---------------------------------------------------------
def test_the_knob_sets_the_count_on_the_thread_that_applies_it() -> None:
    """Regression: torch keeps the count per OS thread once it ran a parallel op there, so a count
    set from another thread (the event loop) never reached a worker that had already stepped."""
    before = torch.get_num_threads()
    pool = ThreadPoolExecutor(1)
    x = torch.randn(256, 256)

    def step() -> int:
        (x @ x).sum()
        return torch.get_num_threads()

    try:
        pool.submit(step).result()
        knob = ThreadKnob(before)
        knob.wanted = 1 if before > 1 else 2
        torch.set_num_threads(knob.wanted)  # from this thread only
        assert pool.submit(step).result() == before  # the worker kept its count
        assert pool.submit(lambda: (knob.apply(), step())[1]).result() == knob.wanted
    finally:
        torch.set_num_threads(before)
        pool.submit(lambda: torch.set_num_threads(before)).result()
        pool.shutdown()


def test_the_runtime_applies_the_knob_to_every_step(runtime: ExecutorRuntime) -> None:
    counts: list[int] = []
    before = runtime.threads.wanted
    runtime.threads.wanted = 1
    try:
        worker = threading.Thread(
            target=lambda: list(
                runtime.generate(
                    [1, 2, 3],
                    SamplingParams(max_tokens=3),
                    on_step=lambda i, s: counts.append(torch.get_num_threads()),
                )
            )
        )
        worker.start()
        worker.join(60)
    finally:
        runtime.threads.wanted = before
    assert counts and set(counts) == {1}


def test_a_plan_switch_builds_at_the_knobs_count(runtime: ExecutorRuntime, monkeypatch) -> None:
    """Regression: the switch's builds ran at its thread's own count (torch's default): beside a
    one-core neighbour with the decode steps at 1 thread, a 210-expert switch took 11.5 s. Every call
    the served model runs off the decode path starts at the knob's count."""
    from moeqos.executor import runtime as runtime_module

    counts: list[int] = []
    real = runtime_module.build_changed

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        counts.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "build_changed", counted)
    served_plan = runtime.plan
    trial = served_plan.with_layers(frozenset({0}), Precision.INT8)
    before = runtime.threads.wanted
    runtime.threads.wanted = 1
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: torch.set_num_threads(2)).result()  # the worker's own count
        served = ServedModel(pool, MeasureSettings(), None, ExecutorMetrics(CollectorRegistry()))
        served.attach(runtime)
        try:
            asyncio.run(served.apply(trial))
        finally:
            runtime.threads.wanted = before
            asyncio.run(served.apply(served_plan))
    assert counts[0] == 1


def test_without_a_floor_the_threads_stay_or_go_back_to_the_starting_count() -> None:
    clock = FakeClock()
    machine = Machine(clock)
    knob = ThreadKnob(2, lambda n: None, lambda: 2)
    target = StandingTarget("", ConnectOptions(), Hooks())
    stats = LiveStats(lambda: BF16, clock, threads=lambda: knob.wanted)
    loop = QosLoop(LoopSettings(), stats, target, lambda: BF16, lambda: knob, machine.share())
    machine.others = 1.0
    for _ in range(6):
        feed(stats, clock, 0.25, 2)
        loop.tick(profile())
    assert knob.wanted == 2  # nothing to hold: torch's own count
    target.set(QosTarget(min_tokens_per_s=8.0), "")
    for _ in range(6):
        feed(stats, clock, 0.25, 2)
        loop.tick(profile())
    assert knob.wanted == 1
    target.set(None, "")
    loop.tick(profile())
    assert knob.wanted == 2 and "no floor" in loop.thread_note


class ProcStat:
    """A /proc/stat file whose cpu line advances as a neighbour (niced or not) and this process run."""

    def __init__(self, path, clock: FakeClock) -> None:
        self.path, self.clock, self.last = path, clock, clock.now
        self.user = self.nice = 0.0  # seconds
        self.own = self.own_niced = 0.0
        self.neighbour = self.niced_neighbour = self.ours = self.ours_niced = 0.0  # cores each uses
        self.write()

    def write(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        user, nice = round(self.user * ticks), round(self.nice * ticks)
        self.path.write_text(f"cpu  {user} {nice} 0 1000 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")

    def advance(self) -> None:
        wall, self.last = self.clock.now - self.last, self.clock.now
        self.user += wall * (self.neighbour + self.ours)
        self.nice += wall * (self.niced_neighbour + self.ours_niced)
        self.own += wall * (self.ours + self.ours_niced)
        self.own_niced += wall * self.ours_niced
        self.write()

    def share(self, nice_counted: bool) -> CpuShare:
        def machine() -> float | None:
            self.advance()
            return machine_busy_seconds(str(self.path), nice=nice_counted)

        return CpuShare(
            self.clock,
            machine,
            lambda: self.own,
            2,
            own_niced=lambda: self.own_niced,
            nice_counted=nice_counted,
        )


def others_after(stat: ProcStat, share: CpuShare, seconds: float = 4.0) -> float | None:
    for _ in range(int(seconds / 0.5)):
        stat.clock.now += 0.5
        share.sample()
    return share.others_cores(2.0)


def test_a_niced_neighbour_is_not_a_busy_core_for_the_thread_count(tmp_path) -> None:
    clock = FakeClock()
    stat = ProcStat(tmp_path / "stat", clock)
    share = stat.share(nice_counted=False)
    stat.ours, stat.niced_neighbour = 1.0, 1.0  # it yields its core to our threads: not counted
    assert others_after(stat, share) == pytest.approx(0.0, abs=0.02)
    stat.niced_neighbour, stat.neighbour = 0.0, 1.0  # one at our priority takes its core: counted
    assert others_after(stat, share) == pytest.approx(1.0, abs=0.02)
    stat.neighbour, stat.ours_niced = 0.0, 1.0  # our own niced thread (variants built ahead): neither
    assert others_after(stat, share) == pytest.approx(0.0, abs=0.02)


def test_when_this_process_runs_niced_niced_time_counts(tmp_path) -> None:
    clock = FakeClock()
    stat = ProcStat(tmp_path / "stat", clock)
    share = stat.share(nice_counted=True)
    stat.ours_niced, stat.niced_neighbour = 1.0, 1.0  # all of us niced: the neighbour may be our equal
    assert others_after(stat, share) == pytest.approx(1.0, abs=0.02)
    assert machine_busy_seconds(str(stat.path), nice=False) == pytest.approx(0.0)


def test_niced_threads_of_this_process_are_read_per_thread_and_an_ended_one_keeps_its_time(tmp_path) -> None:
    from moeqos.executor.cpu_share import NicedThreads

    ticks = os.sysconf("SC_CLK_TCK")

    def task(tid: str, name: str, utime: int, stime: int, nice: int) -> None:
        fields = ["S", *["0"] * 10, str(utime), str(stime), "0", "0", "20", str(nice), "1"]
        (tmp_path / tid).mkdir(exist_ok=True)
        (tmp_path / tid / "stat").write_text(f"{tid} ({name}) {' '.join(fields)} 0 0\n")

    task("100", "python", 5 * ticks, ticks, 0)  # the decode threads: not niced
    task("101", "variant warmup", 2 * ticks, ticks, 19)  # a name with a space and a ')'-free tail
    task("102", "omp worker", ticks, 0, 19)
    niced = NicedThreads(str(tmp_path))
    assert niced() == pytest.approx(4.0)
    (tmp_path / "102" / "stat").unlink()
    (tmp_path / "102").rmdir()  # that thread ended: its time stays counted
    task("101", "variant warmup", 3 * ticks, ticks, 19)
    assert niced() == pytest.approx(5.0)
    assert NicedThreads(str(tmp_path / "none"))() is None
    live = NicedThreads()  # this process, read for real: a thread that nices itself and spins
    before = live()

    spun, read = threading.Event(), threading.Event()

    def spin() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        start = time.thread_time()
        while time.thread_time() - start < 0.3:
            pass
        spun.set()
        read.wait(30)  # alive while read (a thread seen only after it ended is not counted)

    spinner = threading.Thread(target=spin)
    spinner.start()
    spun.wait(60)
    after = live()
    read.set()
    spinner.join()
    assert before is not None and after is not None and after - before >= 0.2


def test_after_a_thread_change_a_replan_waits_for_the_calibration_at_the_new_count() -> None:
    """Regression (contention bench): a violation judged on the few steps at one thread half a second
    after the change re-planned from the profile as measured, kept the quality plan, and the floor
    waited for the next re-plan. The re-plan now waits for `min_tokens` steps at the new count."""
    clock = FakeClock()
    machine = Machine(clock)
    knob = ThreadKnob(2, lambda n: None, lambda: knob.wanted)
    target = StandingTarget("", ConnectOptions(), Hooks())
    target.set(QosTarget(min_tokens_per_s=8.0), "127.0.0.1:1")
    started: list[float] = []
    target.replan = lambda: started.append(clock.now) or True  # type: ignore[method-assign]
    stats = LiveStats(lambda: BF16, clock, threads=lambda: knob.wanted)
    loop = QosLoop(LoopSettings(), stats, target, lambda: BF16, lambda: knob, machine.share())
    feed(stats, clock, 0.1, 30)
    loop.tick(profile())
    machine.others = 1.0
    for _ in range(8):
        feed(stats, clock, 0.25, 2)
        loop.tick(profile())
        if knob.wanted == 1:
            break
    assert knob.wanted == 1 and loop.calibration == LiveCalibration()
    started.clear()  # (a re-plan for the 4 tok/s at 2 threads may have started before the change)
    clock.now += LoopSettings().min_interval_s
    feed(stats, clock, 1 / 5.0, 3)  # 3 steps at 1 thread: 5 tok/s, a 3 s window sized for the floor
    decision = loop.tick(profile())
    assert decision.state is QosState.VIOLATED and not decision.replan and not started
    assert "waiting for 8 steps at 1 threads" in decision.reason
    feed(stats, clock, 1 / 5.0, 5)  # 8 steps at 1 thread: fitted, and the re-plan goes
    decision = loop.tick(profile())
    assert decision.replan and started == [clock.now] and loop.calibration.steps == 8
