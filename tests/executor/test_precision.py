"""Every precision's model output stays within a documented bound of the all-fp32 reference.

Bounds are on ||logits_p - logits_fp32|| / ||logits_fp32|| of a 32-token forward pass on the tiny
random Mixtral (all experts in precision p, dense fp32), about 2x what round-to-nearest gives here:
float formats lose a few 1e-3, int8 ~1e-2, the 4/3/2-bit group formats 0.2/0.35/0.7.
"""

from __future__ import annotations

import pytest
import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision

from tests.executor.tiny import EXPERTS, LAYERS, prompt_ids

LOGIT_ERROR_BOUNDS = {
    Precision.BF16: 0.02,
    Precision.FP16: 0.004,
    Precision.INT8: 0.04,
    Precision.INT4: 0.4,
    Precision.INT3: 0.7,
    Precision.INT2: 1.3,
}


def _relative_error(runtime, precision: Precision, ids: torch.Tensor, reference: torch.Tensor) -> float:
    runtime.apply_plan(Plan.uniform(LAYERS, EXPERTS, precision, "cpu"))
    out = runtime.forward_logits(ids)
    return float((out - reference).norm() / reference.norm())


def test_each_precision_within_its_bound_and_fewer_bits_err_more(runtime) -> None:
    ids = prompt_ids(32)
    reference = runtime.forward_logits(ids)
    errors = {p: _relative_error(runtime, p, ids, reference) for p in LOGIT_ERROR_BOUNDS}
    for precision, bound in LOGIT_ERROR_BOUNDS.items():
        assert 0 < errors[precision] <= bound, (precision, errors[precision])
    ints = [errors[p] for p in (Precision.INT8, Precision.INT4, Precision.INT3, Precision.INT2)]
    assert ints == sorted(ints)


@pytest.mark.parametrize("dense", ["bf16", "fp16"])
def test_half_precision_dense_weights_stay_close(make_runtime, runtime, dense: str) -> None:
    ids = prompt_ids(32)
    reference = runtime.forward_logits(ids)
    half = make_runtime(Plan.uniform(LAYERS, EXPERTS, dense, "cpu"), dense_precision=dense)
    out = half.forward_logits(ids).float()
    assert float((out - reference).norm() / reference.norm()) < 0.05
