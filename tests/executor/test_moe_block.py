"""The MoE block's routing and its one-token (decode) path against naive references, over a grid of
sizes with fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F
from moeqos.core.precision import Precision
from moeqos.executor.moe import MoeBlock
from moeqos.executor.quant import QuantExpert
from moeqos.executor.quant.fused import routed_token
from moeqos.executor.routing import SoftmaxTopK


class Experts:
    """An ExpertRunner over fp32 experts built from random weights; counts calls."""

    def __init__(self, experts: int, hidden: int, inter: int, gen: torch.Generator) -> None:
        self.weights = [
            tuple(
                torch.randn(*shape, generator=gen) / shape[1] ** 0.5
                for shape in ((inter, hidden), (hidden, inter), (inter, hidden))
            )
            for _ in range(experts)
        ]
        self.modules = [QuantExpert.from_weights(*w, Precision.FP32) for w in self.weights]
        self.calls = 0

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.modules[expert](x)

    def run_token(
        self, layer: int, experts: list[int], x: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        self.calls += len(experts)
        return routed_token([self.modules[expert] for expert in experts], x, weights)

    def device_experts(self, layer: int, experts: list[int]) -> list[QuantExpert] | None:
        return [self.modules[expert] for expert in experts]


def naive_moe(block: MoeBlock, experts: Experts, x: torch.Tensor) -> torch.Tensor:
    """transformers' MixtralTopKRouter and dispatch, token by token, in fp32: x [T, H] -> [T, H]."""
    probs = torch.softmax(x.float() @ block.router.weight.T, dim=-1)  # [T, E]
    top, index = torch.topk(probs, block.top_k, dim=-1)  # [T, K]
    top = top / top.sum(dim=-1, keepdim=True)
    out = torch.zeros(x.shape)
    for t in range(x.shape[0]):
        for slot in range(block.top_k):
            w1, w2, w3 = experts.weights[int(index[t, slot])]
            y = F.linear(F.silu(F.linear(x[t], w1)) * F.linear(x[t], w3), w2)  # [H]
            out[t] += top[t, slot] * y
    return out


@pytest.mark.parametrize(
    ("hidden", "inter", "num_experts", "top_k"),
    [(64, 128, 4, 2), (96, 64, 8, 2), (32, 96, 8, 3), (48, 64, 6, 1)],
)
@pytest.mark.parametrize("tokens", [1, 5])
def test_block_matches_the_naive_moe(hidden, inter, num_experts, top_k, tokens):
    gen = torch.Generator().manual_seed(hidden * 1000 + inter + num_experts + top_k + tokens)
    experts = Experts(num_experts, hidden, inter, gen)
    block = MoeBlock(0, SoftmaxTopK(torch.randn(num_experts, hidden, generator=gen), top_k), experts)
    x = torch.randn(1, tokens, hidden, generator=gen)  # [B, S, H]
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[0], naive_moe(block, experts, x[0]), rtol=1e-5, atol=1e-5)
    assert experts.calls == (top_k if tokens == 1 else len(torch.unique(block.route(x[0])[0])))


@pytest.mark.parametrize("num_experts", [2, 8, 64])
def test_route_equals_softmax_topk_renormalise(num_experts):
    gen = torch.Generator().manual_seed(num_experts)
    block = MoeBlock(0, SoftmaxTopK(torch.randn(num_experts, 32, generator=gen), 2), Experts(0, 32, 8, gen))
    x = torch.randn(17, 32, generator=gen)  # [T, H]
    index, weights = block.route(x)
    probs = torch.softmax(x @ block.router.weight.T, dim=-1)  # [T, E]
    top, ref_index = torch.topk(probs, 2, dim=-1)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(weights, top / top.sum(dim=-1, keepdim=True), rtol=1e-6, atol=1e-7)


def test_one_token_path_in_bf16_matches_the_general_path():
    gen = torch.Generator().manual_seed(7)
    experts = Experts(8, 64, 128, gen)
    block = MoeBlock(0, SoftmaxTopK(torch.randn(8, 64, generator=gen), 2), experts)
    x = torch.randn(1, 1, 64, generator=gen).bfloat16()  # [1, 1, H]
    one = block(x)  # the T = 1 path
    general = block(x.expand(1, 2, 64))[:, :1]  # the same token twice takes the multi-token path
    assert one.dtype == torch.bfloat16
    torch.testing.assert_close(one.float(), general.float(), rtol=2e-2, atol=2e-2)
