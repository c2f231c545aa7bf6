"""Variants built ahead (moeqos.executor.variant_warmup): after a build ahead a plan switch quantizes
nothing and serves the same expert bytes; a precision that does not fit the disk is skipped and said;
the memory cache of recent plans is left alone; the build runs on its own thread and stops."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost, HardwareIdentity, ModelIdentity, Profile, QualityPoint
from moeqos.executor.disk_room import filesystem_type
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.variant_warmup import VariantWarmup, WarmupSettings, warm_order

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

P = Precision


def profile_of(
    precisions: tuple[Precision, ...], points: dict[Precision, float] | None = None, measured_at: str = "t0"
) -> Profile:
    """A profile of the tiny model (2 layers of 4 experts, hidden 64, intermediate 128) measuring
    `precisions`, with uniform quality points `points` (precision: perplexity)."""
    model = ModelIdentity("tiny", "fp", LAYERS, EXPERTS, 2, 64, 128, 256)
    hardware = HardwareIdentity("cpu", "test", "host", 1, "none")
    calls = tuple(CallCost(p, "cpu", 100, 0.001) for p in precisions)
    quality = tuple(QualityPoint(f"{p.value}@cpu", ppl, "ptb:valid", 64) for p, ppl in (points or {}).items())
    frequency = tuple((0.5,) * EXPERTS for _ in range(LAYERS))
    return Profile(
        model,
        hardware,
        "ptb:train",
        64,
        frequency,
        0.01,
        calls,
        quality_points=quality,
        measured_at=measured_at,
    )


def test_order_is_measured_quality_first_then_more_bits_and_floats_are_left_out() -> None:
    profile = profile_of(
        (P.BF16, P.INT8, P.INT4, P.INT3, P.INT2, P.INT4_G32),
        {P.BF16: 91.7, P.INT8: 91.0, P.INT4: 101.6, P.INT2: 25_000.0, P.INT4_G32: 91.8},
    )
    assert warm_order(profile) == [P.INT8, P.INT4_G32, P.INT4, P.INT2, P.INT3]


def warmup_for(runtime: ExecutorRuntime, room: int | None = None, reserve: int = 0) -> VariantWarmup:
    """A warm-up of `runtime`'s variants; with `room`, on a filesystem of `room` bytes that the
    variant files (all of them, whoever wrote them) fill."""
    settings = WarmupSettings(reserve_bytes=reserve)
    if room is None:
        return VariantWarmup(lambda: runtime.factory, "cpu", settings)

    def free(directory: Path) -> int:
        return room - sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())

    return VariantWarmup(lambda: runtime.factory, "cpu", settings, free=free)


def test_after_the_build_ahead_a_switch_reads_files_and_serves_the_same_experts(
    make_runtime, tmp_path
) -> None:
    int4 = Plan.uniform(LAYERS, EXPERTS, P.INT4, "cpu")
    cold = make_runtime(variant_cache_dir=tmp_path / "cold")
    before = cold.factory.quantized
    cold.apply_plan(int4)
    assert cold.factory.quantized - before == LAYERS * EXPERTS  # without it, the switch quantizes each
    expected = cold.forward_logits(prompt_ids(6))

    warm = make_runtime(variant_cache_dir=tmp_path / "warm")
    warmup = warmup_for(warm)
    cached = len(warm.factory.memory)
    warmup.run(profile_of((P.FP32, P.INT4, P.INT8)))
    assert warmup.done and warmup.built == {P.INT4: LAYERS * EXPERTS, P.INT8: LAYERS * EXPERTS}
    assert len(warm.factory.memory) == cached  # the recent plans' variants are not pushed out
    for layer in range(LAYERS):
        for expert in range(EXPERTS):
            for precision in (P.INT4, P.INT8):
                key = (layer, expert, precision, 64)
                assert warm.factory.path(key).is_file()
                packed = warm.factory.packed_path(key, "cpu")
                assert packed is None or packed.is_file()
    before = warm.factory.quantized
    warm.apply_plan(int4)
    assert warm.factory.quantized == before  # read from the files written ahead
    torch.testing.assert_close(warm.forward_logits(prompt_ids(6)), expected, rtol=0, atol=0)


def test_a_precision_that_does_not_fit_leaves_no_file_and_is_said(make_runtime) -> None:
    runtime = make_runtime()
    keys = [(layer, e, P.INT4, 64) for layer in range(LAYERS) for e in range(EXPERTS)]
    used = sum(f.stat().st_size for f in runtime.factory.directory.rglob("*") if f.is_file())
    room = used + runtime.factory.new_file_bytes(keys, "cpu") * 11 // 10 + 1000  # int4 fits, int8 not
    warmup = warmup_for(runtime, room=room, reserve=1000)
    warmup.run(profile_of((P.INT8, P.INT4), {P.INT8: 101.0, P.INT4: 91.0}))
    assert warmup.built == {P.INT4: LAYERS * EXPERTS} and list(warmup.skipped) == [P.INT8]
    assert not runtime.factory.path((0, 0, P.INT8, 64)).is_file()
    assert "int8 skipped (needs" in warmup.describe() and "kept in reserve" in warmup.describe()


def test_nothing_is_built_ahead_on_a_filesystem_held_in_ram(make_runtime, tmp_path) -> None:
    runtime = make_runtime()
    warmup = VariantWarmup(lambda: runtime.factory, "cpu", WarmupSettings(), fs_type=lambda d: "tmpfs")
    warmup.run(profile_of((P.INT4,)))
    assert warmup.built == {} and not runtime.factory.path((0, 0, P.INT4, 64)).is_file()
    assert warmup.describe().startswith("off: the variant cache") and "tmpfs (RAM)" in warmup.describe()
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\ntmpfs /tmpx tmpfs rw 0 0\n")
    assert filesystem_type(Path("/tmp/moeqos-variants-x/abc"), str(mounts)) == "tmpfs"
    assert filesystem_type(Path("/tmpdir/x"), str(mounts)) == "ext4"  # a prefix of the name is not a parent
    assert filesystem_type(Path("/x"), str(tmp_path / "none")) is None


def test_it_builds_on_its_own_thread_once_per_profile_and_stops(make_runtime) -> None:
    runtime = make_runtime()
    warmup = warmup_for(runtime)
    assert warmup.describe() == "not started (waiting for the profile)"
    caller = threading.get_ident()
    threads: list[int] = []
    nice: set[int] = set()
    torch_threads: set[int] = set()
    built = runtime.factory.ensure_file

    def record(key, device=None, remember=True) -> Path:
        threads.append(threading.get_ident())
        nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        torch_threads.add(torch.get_num_threads())
        return built(key, device, remember)

    runtime.factory.ensure_file = record  # type: ignore[method-assign]
    profile = profile_of((P.INT4,))
    torch.set_num_threads(torch.get_num_threads())  # new threads start with this thread's count
    warmup.start(profile)
    warmup.start(profile)  # the same profile again: not a second build
    [thread] = warmup._threads
    thread.join(60)
    assert warmup.done and len(threads) == LAYERS * EXPERTS and caller not in threads
    assert nice == {19}  # the lowest priority
    assert torch_threads == {1}  # no OpenMP team beside the decode thread's (torch_threads)
    fresh: list[int] = []
    started_after = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    started_after.start()
    started_after.join()
    assert fresh == [torch.get_num_threads()]  # the count new threads start with is put back
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19  # the caller's unchanged
    warmup.start(profile_of((P.INT4,), measured_at="t1"))  # a new profile builds again (files found)
    warmup.stop()
    assert not warmup.building and warmup._threads == []
    off = VariantWarmup(lambda: runtime.factory, "cpu", WarmupSettings(enabled=False))
    off.start(profile)
    assert not off.building and off.describe() == "off"


def test_a_damaged_packed_file_is_counted_and_the_switch_serves_the_portable_one(
    make_runtime, tmp_path
) -> None:
    int4 = Plan.uniform(LAYERS, EXPERTS, P.INT4, "cpu")
    cold = make_runtime(variant_cache_dir=tmp_path / "cold")
    cold.apply_plan(int4)
    expected = cold.forward_logits(prompt_ids(6))
    warm = make_runtime(variant_cache_dir=tmp_path / "warm")
    warmup_for(warm).run(profile_of((P.INT4,)))
    packed = warm.factory.packed_path((1, 2, P.INT4, 64), "cpu")
    assert packed is not None
    data = bytearray(packed.read_bytes())
    data[len(data) // 2 :] = bytes(0xFF ^ b for b in data[len(data) // 2 :])  # the tensors, not the header
    packed.write_bytes(bytes(data))
    before = warm.factory.quantized
    warm.apply_plan(int4)
    assert warm.factory.integrity.status().damaged == 1 and not packed.exists()
    assert warm.factory.quantized == before  # its portable file served it
    torch.testing.assert_close(warm.forward_logits(prompt_ids(6)), expected, rtol=0, atol=0)


def test_the_build_waits_while_generations_decode_and_goes_on_when_they_end(make_runtime) -> None:
    """Between two experts the build waits while `busy()` (a thread at nice 19 holding the GIL stalls
    the decode step), writes nothing meanwhile, and finishes once the generations are done; a stop
    ends a waiting build."""
    runtime = make_runtime()
    decoding = threading.Event()
    decoding.set()
    written: list[tuple] = []
    built = runtime.factory.ensure_file

    def record(key, device=None, remember=True) -> Path:
        written.append(key)
        return built(key, device, remember)

    runtime.factory.ensure_file = record  # type: ignore[method-assign]
    warmup = VariantWarmup(lambda: runtime.factory, "cpu", WarmupSettings(), busy=decoding.is_set)
    warmup.start(profile_of((P.INT4,)))
    [thread] = warmup._threads
    thread.join(0.5)
    assert thread.is_alive() and written == [] and not warmup.done  # waiting, nothing written
    decoding.clear()
    thread.join(60)
    assert warmup.done and len(written) == LAYERS * EXPERTS

    decoding.set()
    waiting = VariantWarmup(lambda: runtime.factory, "cpu", WarmupSettings(), busy=decoding.is_set)
    waiting.start(profile_of((P.INT8,)))
    waiting.stop()
    assert not waiting.building and not waiting.done
