"""Profiles are well formed and round-trip; evaluate's perplexity matches transformers."""

from __future__ import annotations

import math

import pytest
import torch
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, groups_fit
from moeqos.core.profile import Profile
from moeqos.executor.loader import observing
from moeqos.executor.profiling import planning_precisions
from moeqos.executor.sampling import SamplingParams

from tests.executor.tiny import EXPERTS, LAYERS, fp32_plan, prompt_ids

INT4 = Plan.uniform(LAYERS, EXPERTS, "int4", "cpu")


@pytest.fixture
def calibration(runtime) -> list[int]:
    return runtime.tokenizer.encode(" ".join(["the quick brown fox jumps over the lazy dog"] * 12))


def test_profile_is_well_formed_and_round_trips(runtime, calibration) -> None:
    stages: list[tuple[str, float]] = []
    profile = runtime.profile(
        calibration,
        "tiny:train",
        max_tokens=96,
        repeats=2,
        capture_tokens=32,
        window=48,
        quality_plans=[fp32_plan(), INT4],
        quality_ids=prompt_ids(64, seed=3)[0].tolist(),
        quality_corpus="tiny:valid",
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    assert profile.model == runtime.model and profile.hardware == runtime.hardware
    assert profile.calibration_corpus == "tiny:train" and profile.calibration_tokens == 96
    for row in profile.frequency:
        assert len(row) == EXPERTS and min(row) >= 0
        assert math.isclose(sum(row), runtime.model.top_k, rel_tol=1e-9)
    precisions = set(planning_precisions("cpu", Precision.FP32))
    # no fp16 on a CPU; the coarsest sub-4-bit groups are left to plans that name them (PLANNING_PRECISIONS)
    assert precisions == set(Precision) - {Precision.FP16, Precision.INT3_G128, Precision.INT2_G128}
    # a named group that does not divide the expert dimensions (128 on hidden 64) is not profiled
    measured = {p for p in precisions if groups_fit(p, *runtime.shape, runtime.plan.group_size)}
    assert Precision.INT4_G128 not in measured and Precision.INT4_G32 in measured
    assert {(c.precision, c.tier) for c in profile.call_costs} == {
        (p, t) for p in measured for t in ("cpu", "disk")
    }
    assert all(
        c.seconds > 0 and c.bytes == runtime.model.expert_bytes(c.precision) for c in profile.call_costs
    )
    assert {c.precision for c in profile.load_costs} == measured and all(
        c.seconds > 0 for c in profile.load_costs
    )
    assert profile.fixed_seconds > 0
    assert set(profile.quant_error) == measured == set(profile.precisions)
    assert all(e > 0 for row in profile.quant_error[Precision.INT2] for e in row)
    specs = [q.plan_spec for q in profile.quality_points]
    assert specs[:2] == ["fp32@cpu", "int4@cpu"]  # the uniform plans asked for, then the designed ones
    assert len(specs) == 2 + 3 and all("int4" in s and "fp32" in s for s in specs[2:])
    assert set(profile.layer_kl) == {Precision.INT4} and len(profile.layer_kl[Precision.INT4]) == LAYERS
    assert profile.sensitivity_tokens == 96  # the default 256, bounded by the calibration tokens
    assert {"sensitivity"} <= {s for s, _ in stages}
    assert all(q.perplexity > 1 and q.corpus == "tiny:valid" for q in profile.quality_points)
    assert all(q.tokens == 64 - 2 for q in profile.quality_points)  # quality_ids: 2 windows of 48
    assert {t.name for t in profile.tiers} == {"cpu", "disk"}
    assert Profile.from_json(profile.to_json()) == profile
    assert {s for s, _ in stages} >= {"frequency", "quant_error", "call_costs", "fixed", "quality"}
    assert runtime.plan == fp32_plan()


def test_profile_measures_the_precisions_asked_for(runtime, calibration) -> None:
    asked = [Precision.FP32, Precision.INT4]  # fp16 and bf16 left out
    profile = runtime.profile(
        calibration, "tiny:train", max_tokens=32, repeats=1, capture_tokens=8, window=32, precisions=asked
    )
    assert list(profile.quant_error) == asked == profile.precisions
    assert all(e < 1e-5 for row in profile.quant_error[Precision.FP32] for e in row)
    assert all(e > 1e-3 for row in profile.quant_error[Precision.INT4] for e in row)
    assert not profile.quality_points


def test_quality_tokens_come_with_their_corpus_name(runtime, calibration) -> None:
    with pytest.raises(InvalidArgument):
        runtime.profile(calibration, "tiny:train", quality_plans=[INT4], quality_ids=calibration)
    with pytest.raises(InvalidArgument):
        runtime.profile(calibration, "tiny:train", quality_plans=[INT4], quality_corpus="tiny:valid")


def test_profile_frequencies_count_routed_calls(runtime, calibration) -> None:
    profile = runtime.profile(
        calibration, "tiny:train", max_tokens=64, repeats=1, capture_tokens=8, window=64
    )
    ids = torch.tensor([calibration[:64]])
    expected = _layer_frequencies(runtime, ids)
    for got, want in zip(profile.frequency, expected, strict=True):
        assert got == pytest.approx(want)


def _layer_frequencies(runtime, ids: torch.Tensor) -> list[list[float]]:
    counts = torch.zeros(LAYERS, EXPERTS)

    def observe(layer: int, hidden: torch.Tensor, index: torch.Tensor) -> None:
        counts[layer] += torch.bincount(index.flatten(), minlength=EXPERTS).float()

    with observing(runtime.lm, runtime.adapter, observe):
        runtime.forward_logits(ids)
    return (counts / ids.shape[1]).tolist()


def _transformers_perplexity(model, ids: list[int], window: int) -> float:
    """Non-overlapping windows; within each, every token but the first is predicted from its prefix."""
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start : start + window]])
        with torch.no_grad():
            logits = model(chunk).logits[0, :-1]
        nll += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


def test_evaluate_perplexity_equals_transformers(runtime, reference_model) -> None:
    ids = prompt_ids(100, seed=5)[0].tolist()
    result = runtime.evaluate(ids, context_length=32, decode_tokens=4)
    assert result.perplexity == pytest.approx(_transformers_perplexity(reference_model, ids, 32), rel=1e-4)
    assert result.tokens == 100 - 4 and result.tokens_per_s > 0 and result.seconds > 0


def test_evaluate_times_exactly_the_decode_tokens_it_reports(runtime, monkeypatch) -> None:
    """A prompt whose greedy continuation is end-of-sequence at once: a request stops after one token,
    but evaluate decodes past it and times the tokens it reports, after a warm-up run of as many."""
    ids = prompt_ids(40, seed=8)[0].tolist()
    first = next(iter(runtime.generate(ids[:16], SamplingParams(max_tokens=1)))).token_id
    monkeypatch.setattr(runtime.prompts, "eos_ids", lambda: {first})
    *_, last = runtime.generate(ids[:16], SamplingParams(max_tokens=8))
    assert (last.stats.finish_reason, last.stats.generated_tokens) == ("eos", 1)
    steps: list[int] = []  # decode steps (they keep the last position; scoring windows keep all)
    forward = runtime.forward_logits

    def counting(token_ids, cache=None, keep=0):
        if keep:
            steps.append(token_ids.shape[1])
        return forward(token_ids, cache, keep)

    monkeypatch.setattr(runtime, "forward_logits", counting)
    result = runtime.evaluate(ids, context_length=32, decode_tokens=8)
    assert result.decode_tokens == 8 and result.tokens_per_s > 0
    assert len(steps) == 2 * 8  # the warm-up run and the timed run, each exactly 8 tokens
    assert runtime.evaluate(ids, context_length=32, decode_tokens=0).decode_tokens == 0


def test_evaluate_applies_a_plan_temporarily(runtime) -> None:
    ids = prompt_ids(64, seed=6)[0].tolist()
    reference = runtime.evaluate(ids, context_length=32, decode_tokens=0)
    quantized = runtime.evaluate(ids, INT4, context_length=32, decode_tokens=0)
    assert quantized.perplexity != pytest.approx(reference.perplexity, rel=1e-4)
    assert runtime.plan == fp32_plan()
    assert runtime.evaluate(ids, context_length=32, decode_tokens=0).perplexity == pytest.approx(
        reference.perplexity
    )


def test_strided_windows_score_every_token_once(runtime) -> None:
    ids = prompt_ids(80, seed=7)[0].tolist()
    strided = runtime.evaluate(ids, context_length=32, stride=16, decode_tokens=0)
    assert strided.tokens == 79
    full = runtime.evaluate(ids, context_length=80, decode_tokens=0)
    assert full.tokens == 79
    assert strided.perplexity == pytest.approx(full.perplexity, rel=0.5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"token_ids": [5]}, InvalidArgument),
        ({"context_length": 1}, OutOfRange),
        ({"context_length": 4096}, OutOfRange),
        ({"stride": 64}, InvalidArgument),
        ({"token_ids": [5, 300]}, InvalidArgument),
    ],
)
def test_evaluate_rejects_bad_arguments(runtime, kwargs, error) -> None:
    arguments = {"token_ids": [5, 6, 7, 8], "context_length": 32, **kwargs}
    with pytest.raises(error):
        runtime.evaluate(**arguments)


def test_layers_and_a_loud_layers_experts_are_measured_alone_and_shape_the_signal(
    runtime, calibration, monkeypatch
):
    from moeqos.core.sensitivity import alone_weights_of, expert_signal, shrunk
    from moeqos.executor import profiling
    from moeqos.executor.sensitivity import alone_increases
    from moeqos.planner.quality_model import QualityModel

    asked: list[tuple[float, ...]] = []

    def loud(layer_kl):
        asked.append(tuple(layer_kl))
        return [1]  # two layers are never 8x their median: name one

    monkeypatch.setattr(profiling, "loud_layers", loud)
    stages: set[str] = set()
    quality = prompt_ids(96, seed=5)[0].tolist()
    profile = runtime.profile(
        calibration,
        "tiny:train",
        max_tokens=96,
        repeats=1,
        capture_tokens=32,
        window=48,
        quality_plans=[fp32_plan(), INT4],
        quality_ids=quality,
        quality_corpus="tiny:valid",
        precisions=[Precision.FP32, Precision.INT4],
        progress=lambda stage, fraction: stages.add(stage),
    )
    assert asked == [profile.layer_kl[Precision.INT4]] and "alone" in stages
    # measured on the quality text, where the quality points are, not on the calibration tokens
    assert set(profile.expert_alone) == {1} and profile.alone_tokens == 2 * 47  # 2 windows of 48
    alone = alone_increases(
        runtime, [quality[:48], quality[48:]], Precision.FP32, Precision.INT4, [1], lambda s, f: None
    )
    assert profile.expert_alone[1] == pytest.approx(alone.experts[1], rel=1e-6, abs=1e-9)
    assert profile.layer_alone == pytest.approx(alone.layers, rel=1e-6, abs=1e-9) and len(alone.layers) == 2
    assert profile.layer_alone_error == pytest.approx(alone.layer_errors, rel=1e-6, abs=1e-9)
    assert Profile.from_json(profile.to_json()) == profile
    # the quality model shapes the layers' KL by their increases alone, weighed by their noise, shares
    # layer 1's by its experts measured alone and layer 0's by frequency and error
    model = QualityModel.fit(profile)
    signal = model.sensitivity[Precision.INT4]
    assert "shaped by each layer measured alone, weighed by its noise" in model.basis
    assert "layers 1 shared by their experts measured alone" in model.basis
    kl = shrunk(profile.layer_kl[Precision.INT4], profile.layer_alone, profile.layer_alone_error)
    assert kl != pytest.approx(profile.layer_kl[Precision.INT4])
    weights = alone_weights_of(profile.expert_alone, None, None)[1]
    assert signal[1] == pytest.approx(tuple(kl[1] * w / sum(weights) for w in weights))
    quiet = expert_signal(profile.frequency, profile.quant_error[Precision.INT4], kl)
    assert signal[0] == pytest.approx(quiet[0])
