"""The decode step's layers in C (moeqos.executor.native_decode) on the tiny random Mixtral in bf16: its
logits are the PyTorch step's within rounding for every precision the native kernels read, it really
runs (its calls counted), it hands layers and experts it cannot read to the PyTorch step, it honours the
route observer and `experts_enabled`, a plan switch mid-stream applies, and its attention with a mask is
SDPA's on the same operands."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator

import pytest
import torch
from moeqos.core.dense import dense_precisions
from moeqos.core.plan import Plan, parse_plan
from moeqos.executor.quant import cpu_kernels, native
from moeqos.executor.quant.native import decode
from moeqos.executor.runtime import ExecutorRuntime

from tests.executor.test_fast_decode import assert_close_through_rounded_activations
from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: the native step is off")


@pytest.fixture(autouse=True)
def native_kernels_chosen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """int4 and int8 on the native kernels whatever this process's timing chose (`native.preferred`, noisy
    on a shared machine): the C step reads only those, and the call counts below assume it."""
    monkeypatch.setattr(native, "preferred", lambda precision: True)
    cpu_kernels.int4_layout_tag.cache_clear()
    yield
    cpu_kernels.int4_layout_tag.cache_clear()


def _decode(runtime: ExecutorRuntime, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits [steps + 1, V] of the prompt's last position and `steps` greedy tokens, on a fresh cache."""
    cache = runtime.new_cache()
    out = [runtime.forward_logits(prompt, cache, keep=1)[0, -1]]
    for _ in range(steps):
        out.append(runtime.forward_logits(torch.tensor([[int(out[-1].argmax())]]), cache, keep=1)[0, -1])
    return torch.stack(out).float()


def _counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls from now on of the C step (`layers`) and of the C MoE half for experts it handed back (`moe`)."""
    calls = {"layers": 0, "moe": 0}
    for name, key in (("decode_layers", "layers"), ("moe_step", "moe")):
        original = getattr(decode, name)

        def counted(*args: object, _original: Callable[..., None] = original, _key: str = key) -> None:
            calls[_key] += 1
            _original(*args)

        monkeypatch.setattr(decode, name, counted)
    return calls


def _pytorch_step(runtime: ExecutorRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.decoder is not None
    monkeypatch.setattr(runtime.decoder.native, "reason", "turned off by the test")


def _both(
    runtime: ExecutorRuntime, monkeypatch: pytest.MonkeyPatch, steps: int = 8
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """(C step logits, PyTorch step logits, the C calls of the first) for one prompt."""
    ids = prompt_ids(7, seed=5)
    with monkeypatch.context() as patch:
        calls = _counted(patch)
        ours = _decode(runtime, ids, steps)
    with monkeypatch.context() as patch:
        _pytorch_step(runtime, patch)
        theirs = _decode(runtime, ids, steps)
    return ours, theirs, calls


@pytest.mark.parametrize(
    ("experts", "dense"),
    [
        ("bf16", {}),
        ("int8", {}),
        ("int4", {}),
        ("int4", {"attn": "int8", "head": "int4"}),
        ("bf16", {"attn": "int4"}),
    ],
)
def test_native_step_matches_the_pytorch_step(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch, experts: str, dense: dict
) -> None:
    """Every layer of every step in C (one call a step), logits the PyTorch step's."""
    plan = Plan.uniform(LAYERS, EXPERTS, experts, "cpu").with_dense(dense_precisions(dense))
    runtime = make_runtime(plan, dense_precision="bf16")
    ours, theirs, calls = _both(runtime, monkeypatch)
    assert calls == {"layers": 8, "moe": 0}
    assert_close_through_rounded_activations(ours, theirs)


def test_unreadable_layers_and_experts_run_on_the_pytorch_step(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A q projection with a bias in layer 1 (no C description) and fp32 experts in layer 0: the C step
    hands back layer 0's experts (to the store's `run_token`) and layer 1 whole (to the PyTorch step),
    resuming after each: two C calls a step, and the logits still match."""
    plan = parse_plan("bf16@cpu,L0.E*=fp32", LAYERS, EXPERTS, "cpu")
    runtime = make_runtime(plan, dense_precision="bf16")
    assert runtime.decoder is not None
    slot = runtime.decoder.layers[1].attention.q_proj
    monkeypatch.setattr(slot, "module", torch.nn.Linear(64, 64, dtype=torch.bfloat16))
    ours, theirs, calls = _both(runtime, monkeypatch)
    assert calls == {"layers": 2 * 8, "moe": 0}
    assert_close_through_rounded_activations(ours, theirs)


def test_disk_tier_experts_go_through_the_store(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Experts on the disk tier are not resident: their tokens go to `run_token` (the slot pool)."""
    plan = parse_plan("int8@cpu,L1.E*=int8@disk", LAYERS, EXPERTS, "cpu")
    runtime = make_runtime(plan, dense_precision="bf16")
    ours, theirs, calls = _both(runtime, monkeypatch)
    assert calls == {"layers": 8, "moe": 0}
    assert runtime.store.stats().hits + runtime.store.stats().misses > 0
    assert_close_through_rounded_activations(ours, theirs)


def test_observer_sees_the_routing_and_experts_can_be_off(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route observer hears each layer's normed token and ids (the PyTorch step's, up to a near
    tie); with experts off the MoE halves are skipped and the output is the PyTorch step's without
    experts."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    blocks = runtime.moe_blocks()
    heard: dict[str, list[tuple[int, list[int]]]] = {"c": [], "pytorch": []}
    for step in ("c", "pytorch"):
        with monkeypatch.context() as patch:
            if step == "pytorch":
                _pytorch_step(runtime, patch)
            for block in blocks:
                patch.setattr(
                    block,
                    "observer",
                    lambda layer, h, index, _s=step: heard[_s].append((layer, index[0].tolist())),
                )
            _decode(runtime, prompt_ids(5, seed=2), 4)
    decode_steps = slice(-4 * LAYERS, None)  # the prompt's pass routes all its tokens at once
    assert heard["c"][decode_steps] == heard["pytorch"][decode_steps]
    off = {}
    for step in ("c", "pytorch"):
        with monkeypatch.context() as patch:
            calls = _counted(patch)
            if step == "pytorch":
                _pytorch_step(runtime, patch)
            for block in blocks:
                patch.setattr(block, "experts_enabled", False)
            off[step] = _decode(runtime, prompt_ids(5, seed=2), 3)
            if step == "c":
                assert calls == {"layers": 3, "moe": 0}
    assert_close_through_rounded_activations(off["c"], off["pytorch"])


def test_plan_switch_mid_stream_applies(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching experts and attention to int4 between two decode steps changes the next step's logits
    as it does on the PyTorch step (the C step's table, filled by the step before, is re-read: the dense
    part's `generation` and the serving plan changed)."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    lossy = Plan.uniform(LAYERS, EXPERTS, "int4", "cpu").with_dense(dense_precisions({"attn": "int4"}))

    def two_steps(switch: bool) -> torch.Tensor:
        runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"))
        cache = runtime.new_cache()
        logits = runtime.forward_logits(prompt_ids(6, seed=1), cache, keep=1)[0, -1]
        logits = runtime.forward_logits(torch.tensor([[int(logits.argmax())]]), cache, keep=1)[0, -1]
        if switch:
            runtime.apply_plan(lossy)
        return runtime.forward_logits(torch.tensor([[int(logits.argmax())]]), cache, keep=1)[0, -1].float()

    results = {}
    for step in ("c", "pytorch"):
        with monkeypatch.context() as patch:
            if step == "pytorch":
                _pytorch_step(runtime, patch)
            results[step] = two_steps(switch=True)
    assert_close_through_rounded_activations(results["c"], results["pytorch"])
    assert (two_steps(switch=False) - results["c"]).abs().max() > 0.05


def test_masked_attention_is_sdpa_on_the_same_operands(
    make_runtime: Callable[..., ExecutorRuntime],
) -> None:
    """One stream whose first 3 cache columns are padding (mask 0): the C step's logits equal the
    PyTorch step's on the same cache and mask."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    assert runtime.decoder is not None
    decoder = runtime.decoder
    ids = prompt_ids(9, seed=4)
    outs = []
    for native_on in (True, False):
        cache = runtime.new_cache()
        runtime.forward_logits(ids, cache, keep=1)
        mask = torch.ones(1, cache.width + 1, dtype=torch.long)
        mask[0, :3] = 0
        reason = decoder.native.reason
        decoder.native.reason = None if native_on else "off"
        try:
            with torch.inference_mode():
                logits = decoder(
                    torch.tensor([[7]]), cache, mask, torch.tensor([[cache.width - 3]])
                )  # [1, 1, V]
            outs.append(logits[0, -1].float())
        finally:
            decoder.native.reason = reason
    assert_close_through_rounded_activations(outs[0], outs[1])


def test_private_view_experts_run_in_c_layer_by_layer(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a private plan view the C step hands every layer's experts back (its tables are the
    serving plan's); they run on the view's own modules through the C MoE half, and the logits are the
    view plan's as the PyTorch step computes them, not the serving plan's."""
    from moeqos.executor.plan_view import private_view

    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    viewed = Plan.uniform(LAYERS, EXPERTS, "int4", "cpu")
    with private_view(runtime, viewed):
        ours, theirs, calls = _both(runtime, monkeypatch, steps=3)
    assert calls == {"layers": LAYERS * 3, "moe": LAYERS * 3}
    assert_close_through_rounded_activations(ours, theirs)
    serving, _, _ = _both(runtime, monkeypatch, steps=3)
    assert (serving - ours).abs().max() > 0.05


def test_long_cache_attention_in_parallel_heads_matches(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 32 cached columns the C step splits attention heads across threads: the logits still match
    the PyTorch step's."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    ids = prompt_ids(300, seed=7)
    results = {}
    for step in ("c", "pytorch"):
        with monkeypatch.context() as patch:
            if step == "pytorch":
                _pytorch_step(runtime, patch)
            results[step] = _decode(runtime, ids, 3)
    assert_close_through_rounded_activations(results["c"], results["pytorch"])


def test_breakdown_reads_the_c_steps_own_clock(make_runtime: Callable[..., ExecutorRuntime]) -> None:
    """The profiler sees the C step as one op: the breakdown's attention and experts come from the step's
    own clock (both halves ran, so both are positive), and the parts still sum to the step."""
    from moeqos.executor.step_profile import decode_breakdown

    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "int8", "cpu"), dense_precision="bf16")
    assert runtime.decoder is not None
    before = runtime.decoder.native.steps
    found = decode_breakdown(runtime, runtime.lm, prompt_ids(6)[0].tolist(), 3, runtime.decoder)
    assert runtime.decoder.native.steps == before + 4  # the warm-up step and the 3 profiled, all in C
    assert found.parts["experts"] > 0 and found.parts["attention"] > 0
    assert sum(found.parts.values()) == pytest.approx(found.step_seconds)


def test_silu_times_up_is_torchs_bit_for_bit() -> None:
    """The C step's SiLU (a vector exp in place of libm's) against torch's bf16 silu(gate) * up for every
    bf16 gate value: the exp's overflow, subnormals, NaNs and infinities included."""
    gate = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)  # [65536]
    up = torch.randn(gate.numel(), generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    act = torch.empty_like(gate)
    native.call("moeqos_silu_mul", gate.data_ptr(), up.data_ptr(), gate.numel(), act.data_ptr())
    expected = torch.nn.functional.silu(gate) * up
    same = (act.view(torch.int16) == expected.view(torch.int16)) | (act.isnan() & expected.isnan())
    assert bool(same.all()), f"differs at gates {gate[~same][:8].tolist()}"


@pytest.mark.parametrize("spec", ["int4@cpu", "int4@cpu,L0.E1=bf16@cpu"])
def test_the_moe_half_is_the_same_one_expert_per_thread(
    make_runtime: Callable[..., ExecutorRuntime], spec: str
) -> None:
    """With two threads, a token's two equal int4 experts run one per thread, whole; unequal ones split
    each matmul. Either way every output feature is one thread's sum in one order, so the MoE half is
    bit for bit the single thread's."""
    runtime = make_runtime(parse_plan(spec, LAYERS, EXPERTS, "cpu"), dense_precision="bf16")
    modules = runtime.store.device_experts(0, [0, 1])
    assert modules is not None
    pairs = [(decode.describe(m.w13.kernel), decode.describe(m.w2.kernel)) for m in modules]
    assert all(None not in pair for pair in pairs), "an expert the C step cannot read (C would crash)"
    hidden = runtime.decoder.native.shape.hidden
    normed = torch.randn(1, hidden, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    weights = torch.tensor([[0.7, 0.3]])
    outs = []
    for threads in (1, 2):
        x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        w13 = (ctypes.c_void_p * 2)(*(p[0] for p in pairs))
        w2 = (ctypes.c_void_p * 2)(*(p[1] for p in pairs))
        native.call(
            "moeqos_moe_step", hidden, x.data_ptr(), normed.data_ptr(), 2, ctypes.addressof(w13),
            ctypes.addressof(w2), weights.data_ptr(), threads,
        )  # fmt: skip
        outs.append(x)
    assert torch.equal(outs[0], outs[1])


def test_a_cache_regrown_mid_stream_is_read_at_its_new_buffers(
    make_runtime: Callable[..., ExecutorRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C step re-reads the cache's addresses only when its buffers change (`KvCache.buffers`): fed the
    same tokens past the cache's first capacity, it matches the PyTorch step on every step after the
    regrowth too (stale addresses would write into freed buffers)."""
    runtime = make_runtime(Plan.uniform(LAYERS, EXPERTS, "bf16", "cpu"), dense_precision="bf16")
    prompt = prompt_ids(7, seed=5)
    fed = prompt_ids(70, seed=6)[0].tolist()  # past the 64 columns a short prompt's cache starts with
    results, regrown = {}, {}
    for step in ("c", "pytorch"):
        with monkeypatch.context() as patch:
            if step == "pytorch":
                _pytorch_step(runtime, patch)
            cache = runtime.new_cache()
            out = [runtime.forward_logits(prompt, cache, keep=1)[0, -1]]
            first_buffers = cache.buffers
            for token in fed:
                out.append(runtime.forward_logits(torch.tensor([[token]]), cache, keep=1)[0, -1])
            regrown[step] = cache.buffers != first_buffers
            results[step] = torch.stack(out).float()
    assert regrown == {"c": True, "pytorch": True}
    assert_close_through_rounded_activations(results["c"], results["pytorch"])
