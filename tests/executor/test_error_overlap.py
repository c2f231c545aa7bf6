"""The layers' error overlap (moeqos.executor.error_overlap) on tiny Mixtral checkpoints: distinct random
experts' errors hardly overlap; copies of one expert (a sparse-upcycled model) make the same error on a
token, so their overlap is set by the router's weights alone, which these tests compute on their own."""

from __future__ import annotations

from pathlib import Path

import torch
from moeqos.core.precision import Precision
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.error_overlap import error_overlap
from moeqos.executor.profiling import route_calibration
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.testing import make_tiny_mixtral
from moeqos.executor.variant_errors import ReferenceOutputs

from tests.executor.tiny import LAYERS, fp32_plan, prompt_ids, upcycled

IDS = prompt_ids(96, seed=7)[0].tolist()


def _no_progress(stage: str, fraction: float) -> None:
    pass


def _measured(
    directory: Path, tmp_path: Path
) -> tuple[tuple[float, ...], ExecutorRuntime, list[torch.Tensor]]:
    config = ExecutorConfig(
        model_dir=directory, dense_precision="fp32", variant_cache_dir=tmp_path / "variants"
    )
    runtime = ExecutorRuntime.load(config, fp32_plan())
    _, captured = route_calibration(runtime, IDS, 48, 32, _no_progress)
    overlap = error_overlap(runtime, ReferenceOutputs(runtime, captured), Precision.INT4)
    return overlap, runtime, captured


def test_distinct_experts_errors_hardly_overlap(tiny_dir: Path, tmp_path: Path) -> None:
    overlap, _, _ = _measured(tiny_dir, tmp_path)
    assert len(overlap) == LAYERS
    assert all(0.0 <= o < 0.15 for o in overlap)


def test_copies_of_one_expert_overlap_by_their_routing_weights(tmp_path: Path) -> None:
    """With one error d per token shared by its experts, the layer's energy is sum_t (sum_k r_k)^2 |d|^2
    and its diagonal sum_t sum_k r_k^2 |d|^2: the overlap is a weighted mean of each token's
    1 - sum r^2 / (sum r)^2 (0.5 for two even weights), so it lies between their extremes."""
    directory = upcycled(make_tiny_mixtral(tmp_path / "upcycled", seed=3))
    overlap, runtime, captured = _measured(directory, tmp_path)
    for layer, measured in enumerate(overlap):
        _, weights = runtime.moe_blocks()[layer].route(captured[layer])  # [N, K]
        per_token = 1 - weights.pow(2).sum(1) / weights.sum(1).pow(2)  # [N]
        assert float(per_token.min()) - 1e-6 <= measured <= float(per_token.max()) + 1e-6
        assert measured > 0.2
    distinct, _, _ = _measured(make_tiny_mixtral(tmp_path / "distinct", seed=3), tmp_path / "d")
    assert all(d < u for d, u in zip(distinct, overlap, strict=True))
