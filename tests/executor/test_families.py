"""Every supported MoE family on a tiny random checkpoint written by transformers' own save_pretrained:
the fp32 plan reproduces transformers' model (logits within 1e-4, identical greedy output), and the
routers it loads are the ones the checkpoint's config asks for (a wrong one is caught)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from moeqos.cli.model_cmds import model_info
from moeqos.core.errors import InvalidArgument
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.adapters import adapter_for, read_model
from moeqos.executor.checkpoint import CheckpointError
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.identity import served_dense_bytes
from moeqos.executor.loader import moe_blocks, observing
from moeqos.executor.routing import SoftmaxTopK, WithShared
from moeqos.executor.runtime import ExecutorRuntime
from moeqos.executor.sampling import SamplingParams
from moeqos.executor.tiny_families import family_names, make_tiny

from tests.executor.tiny import prompt_ids

FAMILIES = family_names()


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(request.param, tmp_path_factory.mktemp("families") / request.param)


@pytest.fixture(scope="module")
def family_runtime(family_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorRuntime]:
    """The runtime on `family_dir` serving all experts (shared slices included) in fp32."""
    spec = read_model(family_dir)[2]
    config = ExecutorConfig(
        model_dir=family_dir, dense_precision="fp32", variant_cache_dir=tmp_path_factory.mktemp("variants")
    )
    plan = Plan.uniform(spec.num_layers, spec.num_experts, Precision.FP32, "cpu")
    with ExecutorRuntime.load(config, plan) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def reference(family_dir: Path) -> Any:
    """transformers' own model of the family, loaded from the same directory in fp32."""
    adapter = adapter_for(read_model(family_dir)[0].model_type)
    return adapter.model_class.from_pretrained(str(family_dir), dtype=torch.float32).eval()  # type: ignore[attr-defined]


def test_fp32_logits_match_transformers(family_runtime: ExecutorRuntime, reference: Any) -> None:
    ids = prompt_ids(24)
    with torch.no_grad():
        expected = reference(ids).logits  # [1, S, V]
    torch.testing.assert_close(family_runtime.forward_logits(ids), expected, atol=1e-4, rtol=0)


def test_greedy_output_is_identical(family_runtime: ExecutorRuntime, reference: Any) -> None:
    ids = prompt_ids(10, seed=3)
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, 10:]
    events = list(family_runtime.generate(ids[0].tolist(), SamplingParams(max_tokens=12)))
    got = [e.token_id for e in events if e.token_id is not None]
    assert got == expected.tolist()


def test_a_pass_from_any_moe_layer_on_the_captured_states_is_the_whole_pass(
    family_runtime: ExecutorRuntime,
) -> None:
    """moeqos.executor.layer_tail through the runtime: starting at MoE layer l from the hidden states the
    reference pass had there gives that pass's logits bit for bit (DeepSeek-V3's first layer is dense, so
    MoE layer 0 starts at decoder layer 1); the states of another layer do not; the decoder's own layers
    are back afterwards."""
    ids = prompt_ids(20, seed=5)
    layers = list(family_runtime.adapter.layers(family_runtime.lm))
    whole, inputs = family_runtime.layer_inputs(ids)  # [1, S, V], L x [1, S, H]
    assert len(inputs) == family_runtime.num_layers
    torch.testing.assert_close(whole, family_runtime.forward_logits(ids), atol=0, rtol=0)
    for layer in range(family_runtime.num_layers):
        got = family_runtime.logits_from(layer, inputs[layer], ids)
        torch.testing.assert_close(got, whole, atol=0, rtol=0)
    wrong = family_runtime.logits_from(1, inputs[0], ids)
    assert not torch.allclose(wrong, whole, atol=1e-3)
    assert list(family_runtime.adapter.layers(family_runtime.lm)) == layers


def test_a_wrong_router_is_caught(family_runtime: ExecutorRuntime, reference: Any) -> None:
    """The logits check above can fail: with each layer routing to its k *least* likely experts instead,
    the same comparison finds a difference far beyond its tolerance."""
    ids = prompt_ids(24)
    with torch.no_grad():
        expected = reference(ids).logits
    blocks = moe_blocks(family_runtime.lm, family_runtime.adapter)
    saved = [block.router for block in blocks]
    try:
        for block in blocks:
            routed = block.router.routed if isinstance(block.router, WithShared) else block.router
            block.router = SoftmaxTopK(-routed.weight.detach(), routed.width)
        assert (family_runtime.forward_logits(ids) - expected).abs().max() > 1e-3
    finally:
        for block, router in zip(blocks, saved, strict=True):
            block.router = router


def test_identity_counts_shared_slices_as_experts(family_runtime: ExecutorRuntime, family_dir: Path) -> None:
    spec = read_model(family_dir)[2]
    model = family_runtime.model
    assert (model.num_layers, model.num_experts, model.top_k) == (
        spec.num_layers,
        spec.num_routed + spec.num_shared,
        spec.top_k + spec.num_shared,
    )
    assert len(family_runtime.moe_blocks()) == spec.num_layers


def test_every_token_routes_to_every_shared_slice(family_runtime: ExecutorRuntime, family_dir: Path) -> None:
    """What profiling counts (the observed routing): K routed experts per token, all distinct and below
    E, then the S shared slices E..E+S-1, so their frequency is 1 and the planner prices them per token."""
    spec = read_model(family_dir)[2]
    seen: dict[int, torch.Tensor] = {}
    with observing(
        family_runtime.lm, family_runtime.adapter, lambda layer, _, index: seen.setdefault(layer, index)
    ):
        family_runtime.forward_logits(prompt_ids(9))
    assert sorted(seen) == list(range(spec.num_layers))
    for index in seen.values():  # [T, K + S]
        assert index.shape == (9, spec.top_k + spec.num_shared)
        routed = index[:, : spec.top_k]
        assert int(routed.max()) < spec.num_routed and all(
            len(set(row.tolist())) == spec.top_k for row in routed
        )
        shared = torch.arange(spec.num_routed, spec.num_experts).expand(9, spec.num_shared)
        assert torch.equal(index[:, spec.top_k :], shared)


def test_model_info_counts_the_dense_bytes_the_runtime_holds(
    family_runtime: ExecutorRuntime, family_dir: Path
) -> None:
    """`moeqos model info` reads the checkpoint's keys through the adapter (experts, routers, shared
    gates, correction biases) and gets what the loaded model holds in bf16 with fp32 routers."""
    assert model_info(family_dir)["dense_bytes"] == served_dense_bytes(family_runtime.lm, Precision.BF16)


def _edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_shared_expert_that_is_not_whole_slices_is_refused(tmp_path: Path) -> None:
    directory = make_tiny("qwen2_moe", tmp_path / "q", with_tokenizer=False)
    _edit_config(directory, shared_expert_intermediate_size=96)  # 1.5 routed experts
    with pytest.raises(InvalidArgument, match="not a multiple"):
        read_model(directory)


def test_a_fused_expert_tensor_of_the_wrong_shape_fails_at_load(tmp_path: Path) -> None:
    directory = make_tiny("granitemoe", tmp_path / "g", with_tokenizer=False)
    _edit_config(directory, intermediate_size=32)
    config = ExecutorConfig(model_dir=directory, variant_cache_dir=tmp_path / "v")
    with pytest.raises(CheckpointError, match=r"input_linear.*expected \[8, 64, 64\]"):
        ExecutorRuntime.load(config)
