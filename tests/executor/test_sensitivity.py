"""The output-KL sensitivity (moeqos.executor.sensitivity) and the designed calibration plans, on a tiny
random Mixtral against a direct computation."""

from __future__ import annotations

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.calibration_design import designed_plans, uniform_increases
from moeqos.executor.sensitivity import Alone, alone_increases, layer_kl, with_layer

from tests.executor.tiny import EXPERTS, LAYERS, fp32_plan, prompt_ids

IDS = prompt_ids(40, seed=11)[0].tolist()


def _no_progress(stage: str, fraction: float) -> None:
    pass


def _direct_kl(runtime, plan: Plan) -> float:
    """KL(fp32 || plan) per token, computed here from two plain forward passes."""
    window = torch.tensor([IDS])  # [1, S]
    runtime.apply_plan(fp32_plan())
    ref = torch.log_softmax(runtime.forward_logits(window)[0].float(), -1)  # [S, V]
    runtime.apply_plan(plan)
    got = torch.log_softmax(runtime.forward_logits(window)[0].float(), -1)  # [S, V]
    return float((ref.exp() * (ref - got)).sum(-1).mean())


def test_layer_kl_matches_a_direct_computation_and_restores_the_plan(runtime) -> None:
    served = Plan.uniform(LAYERS, EXPERTS, Precision.INT8, "cpu")
    runtime.apply_plan(served)
    kl = layer_kl(runtime, IDS, Precision.FP32, [Precision.INT4, Precision.INT2], _no_progress)
    assert runtime.plan == served
    assert set(kl) == {Precision.INT4, Precision.INT2} and all(len(r) == LAYERS for r in kl.values())
    for layer in range(LAYERS):
        direct = _direct_kl(runtime, with_layer(fp32_plan(), layer, Precision.INT2))
        assert kl[Precision.INT2][layer] == pytest.approx(direct, rel=1e-5)
        assert kl[Precision.INT2][layer] > kl[Precision.INT4][layer] > 0


def test_layer_kl_of_the_reference_precision_is_zero(runtime) -> None:
    kl = layer_kl(runtime, IDS, Precision.FP32, [Precision.FP32], _no_progress)
    assert kl[Precision.FP32] == pytest.approx((0.0,) * LAYERS, abs=1e-7)


def _direct_token_nll(runtime, plan: Plan, ids: list[int]) -> torch.Tensor:
    """[S-1] the NLL of each next token of `ids` under `plan`, from one plain forward pass."""
    runtime.apply_plan(plan)
    window = torch.tensor([ids])  # [1, S]
    logp = torch.log_softmax(runtime.forward_logits(window)[0].float(), -1)[:-1]  # [S-1, V]
    return -logp.gather(1, window[0, 1:, None])[:, 0].double()


def test_layers_and_experts_alone_match_a_direct_computation_and_restore_the_plan(runtime) -> None:
    served = Plan.uniform(LAYERS, EXPERTS, Precision.INT8, "cpu")
    runtime.apply_plan(served)
    windows = [IDS[:24], IDS[24:]]
    alone = alone_increases(runtime, windows, Precision.FP32, Precision.INT2, [1], _no_progress)
    assert runtime.plan == served and set(alone.experts) == {1} and len(alone.experts[1]) == EXPERTS
    assert len(alone.layers) == len(alone.layer_errors) == LAYERS
    scored = sum(len(w) - 1 for w in windows)
    assert alone.tokens == scored

    def increases(plan: Plan) -> torch.Tensor:  # [scored] per token, every window's
        return torch.cat(
            [
                _direct_token_nll(runtime, plan, w) - _direct_token_nll(runtime, fp32_plan(), w)
                for w in windows
            ]
        )

    for expert in range(EXPERTS):
        direct = increases(fp32_plan().with_expert(1, expert, Precision.INT2))
        assert alone.experts[1][expert] == pytest.approx(float(direct.mean()), rel=1e-4, abs=1e-7)
    for layer in range(LAYERS):
        direct = increases(fp32_plan().with_layers((layer,), Precision.INT2))
        assert alone.layers[layer] == pytest.approx(float(direct.mean()), rel=1e-4, abs=1e-7)
        standard_error = float(direct.std(correction=0)) / scored**0.5
        assert alone.layer_errors[layer] == pytest.approx(standard_error, rel=1e-3, abs=1e-7)
    assert any(v != 0 for v in alone.experts[1]) and all(se > 0 for se in alone.layer_errors)
    assert alone_increases(runtime, [], Precision.FP32, Precision.INT2, [1], _no_progress) == Alone()


def test_designed_plans_put_the_lossy_precision_on_the_safest_and_the_riskiest_experts() -> None:
    signal = {
        Precision.INT4: ((0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)),
        Precision.INT8: ((0.01,) * 4, (0.01,) * 4),
        Precision.INT3: ((0.4, 0.3, 0.2, 0.1), (0.5, 0.6, 0.7, 0.8)),
        Precision.INT2: ((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)),
    }
    increases = {Precision.BF16: 0.0, Precision.INT8: 0.005, Precision.INT4: 0.2, Precision.INT3: 0.5}
    increases[Precision.INT2] = 1000.0
    plans = designed_plans(signal, Precision.BF16, increases, {Precision.INT4}, "cpu", 64)
    lossy = [{k for k, a in p.items() if a.precision != Precision.BF16} for p in plans]
    assert lossy == [
        {(0, 0), (0, 1)},  # int4 on the safest quarter
        {(0, 0), (0, 1), (0, 2), (0, 3)},  # the safest half
        {(1, 3), (1, 2)},  # the riskiest quarter: int4 is the anchor (its KL measured)
        {(0, 3), (0, 2)},  # int3: the safest quarter and half only (it borrows int4's ranking)
        {(0, 0), (0, 1), (0, 2), (0, 3)},
        {(0, 0)},  # int2: the safest eighth only; int8: none (measured nearly lossless)
    ]
    assert all(p.group_size == 64 for p in plans)


def test_a_nearly_lossless_precision_gets_designs_only_without_a_measured_reference() -> None:
    signal = {Precision.INT4: ((0.1, 0.2, 0.3, 0.4),)}
    shape = (1, 4, Precision.BF16, "cpu")
    plans = [Plan.uniform(*shape), Plan.uniform(1, 4, Precision.INT4, "cpu")]
    lossless = uniform_increases(plans, [10.0, 10.05], Precision.BF16)
    assert lossless == pytest.approx({Precision.BF16: 0.0, Precision.INT4: 0.005})
    assert designed_plans(signal, Precision.BF16, lossless, (), "cpu", 64) == []
    unknown = uniform_increases(plans[1:], [10.05], Precision.BF16)  # no reference measured
    assert len(designed_plans(signal, Precision.BF16, unknown, (), "cpu", 64)) == 2
