"""Each router strategy against the transformers router it reproduces, over a grid of sizes with fresh
random inputs: the same experts for every token, and the same weights."""

from __future__ import annotations

import pytest
import torch
from moeqos.executor.routing import GroupedSigmoidTopK, SoftmaxTopK, WithShared
from transformers import DeepseekV3Config, GraniteMoeConfig, MixtralConfig, OlmoeConfig, Qwen2MoeConfig
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from transformers.models.granitemoe.modeling_granitemoe import GraniteMoeTopKRouter
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter


def _same_routing(
    got: tuple[torch.Tensor, torch.Tensor], expected: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Equal (expert, weight) pairs per token, whatever order each side lists them in."""
    (index, weights), (ref_index, ref_weights) = got, expected
    order, ref_order = index.argsort(dim=-1), ref_index.argsort(dim=-1)
    assert torch.equal(index.gather(1, order), ref_index.gather(1, ref_order))
    torch.testing.assert_close(
        weights.gather(1, order), ref_weights.float().gather(1, ref_order), rtol=1e-5, atol=1e-6
    )


GRID = [(16, 4, 2), (32, 8, 2), (48, 16, 4), (64, 64, 8)]
"""(hidden, experts, top_k)"""


@pytest.mark.parametrize(("hidden", "experts", "top_k"), GRID)
@pytest.mark.parametrize("family", ["mixtral", "granitemoe", "qwen2_moe-norm", "qwen2_moe", "olmoe"])
def test_softmax_topk_matches_transformers(family: str, hidden: int, experts: int, top_k: int) -> None:
    gen = torch.Generator().manual_seed(hidden + experts + top_k)
    norm = family != "qwen2_moe" and family != "olmoe"
    common = {"hidden_size": hidden, "num_experts_per_tok": top_k}
    if family == "mixtral":
        ref: torch.nn.Module = MixtralTopKRouter(MixtralConfig(num_local_experts=experts, **common))
    elif family == "granitemoe":
        ref = GraniteMoeTopKRouter(GraniteMoeConfig(num_local_experts=experts, **common))
    elif family == "olmoe":
        ref = OlmoeTopKRouter(OlmoeConfig(num_experts=experts, norm_topk_prob=False, **common))
    else:
        ref = Qwen2MoeTopKRouter(Qwen2MoeConfig(num_experts=experts, norm_topk_prob=norm, **common))
    weight = torch.randn(experts, hidden, generator=gen)
    ref.weight.data.copy_(weight)
    x = torch.randn(33, hidden, generator=gen)  # [T, H]
    _, ref_weights, ref_index = ref(x)
    _same_routing(SoftmaxTopK(weight, top_k, renormalise=norm)(x), (ref_index, ref_weights))


@pytest.mark.parametrize(("groups", "topk_groups", "norm"), [(1, 1, True), (4, 2, True), (8, 3, False)])
def test_grouped_sigmoid_matches_deepseek_v3(groups: int, topk_groups: int, norm: bool) -> None:
    gen = torch.Generator().manual_seed(groups * 10 + topk_groups)
    experts, hidden, top_k = 32, 24, 4
    config = DeepseekV3Config(
        hidden_size=hidden,
        n_routed_experts=experts,
        num_experts_per_tok=top_k,
        n_group=groups,
        topk_group=topk_groups,
        norm_topk_prob=norm,
        routed_scaling_factor=2.5,
    )
    ref = DeepseekV3TopkRouter(config)
    weight, bias = torch.randn(experts, hidden, generator=gen), torch.randn(experts, generator=gen) * 0.3
    ref.weight.data.copy_(weight)
    ref.e_score_correction_bias.copy_(bias)
    x = torch.randn(40, hidden, generator=gen)
    _, ref_weights, ref_index = ref(x)
    router = GroupedSigmoidTopK(weight, bias, top_k, groups, topk_groups, norm, 2.5)
    _same_routing(router(x), (ref_index, ref_weights))
    if groups > 1:  # the bias and the groups change the choice: a router without them differs
        plain = GroupedSigmoidTopK(weight, torch.zeros(experts), top_k, 1, 1, norm, 2.5)
        assert not torch.equal(plain(x)[0].sort(dim=-1)[0], ref_index.sort(dim=-1)[0])


def test_shared_slices_are_picked_by_every_token_with_their_gate() -> None:
    gen = torch.Generator().manual_seed(5)
    routed = SoftmaxTopK(torch.randn(6, 16, generator=gen), 2)
    gate = torch.randn(1, 16, generator=gen)
    x = torch.randn(7, 16, generator=gen)  # [T, H]
    index, weights = WithShared(routed, 6, 3, gate)(x)  # [T, 5], [T, 5]
    assert torch.equal(index[:, 2:], torch.tensor([[6, 7, 8]]).expand(7, 3))
    torch.testing.assert_close(weights[:, 2:], torch.sigmoid(x @ gate.T).expand(7, 3))
    assert torch.equal(index[:, :2], routed(x)[0])
    ungated = WithShared(routed, 6, 1)(x)[1]
    assert torch.equal(ungated[:, 2], torch.ones(7))
