"""Router strategies: which experts each token runs, and with what weight, per model family.

Legend for shape comments: T tokens, H hidden, E routed experts, K routed top-k, S shared-expert slices,
G expert groups.

Every router is an `nn.Module` mapping hidden states [T, H] to (index [T, W], weights [T, W]) in fp32,
W = `width` experts per token. Routers stay full precision on purpose, whatever the dense precision:
they are tiny, and rounding them would change which experts run, which a per-expert plan is meant to
control. Each reproduces one transformers router exactly (the class named in its docstring).

Shared experts (`WithShared`) are routed too: every token picks them, so the MoE block's dispatch, the
profile's frequencies (1.0 per token) and the plan treat them like any other expert.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    """An fp32 parameter no one trains (a parameter, not a buffer, so it counts as a router weight)."""
    return nn.Parameter(tensor.detach().float(), requires_grad=False)


class Router(nn.Module):
    """Hidden states [T, H] -> (expert index [T, W], weight [T, W]); `width` is W."""

    width: int

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class SoftmaxTopK(Router):
    """Softmax over all E experts, then top-k: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE.

    `renormalise` (Mixtral and Granite always; Qwen and OLMoE when `norm_topk_prob`) makes the k weights
    sum to one, which equals a softmax over the top-k logits (softmax is monotonic, and the
    renormalisation cancels the other experts' share), in two ops fewer. Without it the weights are the
    k probabilities of the softmax over all experts, as transformers' `Qwen2MoeTopKRouter` keeps them.
    """

    def __init__(self, weight: torch.Tensor, top_k: int, renormalise: bool = True) -> None:
        super().__init__()
        self.weight = _frozen(weight)  # [E, H]
        self.width = top_k
        self.renormalise = renormalise

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.mm(flat.float(), self.weight.t())  # [T, E]: F.linear's own mm, fewer aten calls
        if self.renormalise:
            top, index = torch.topk(logits, self.width, dim=-1)  # [T, K], [T, K]
            return index, torch.softmax(top, dim=-1)
        probs = torch.softmax(logits, dim=-1)  # [T, E]
        top, index = torch.topk(probs, self.width, dim=-1)  # [T, K], [T, K]
        return index, top


class GroupedSigmoidTopK(Router):
    """DeepSeek-V3 routing (transformers' `DeepseekV3TopkRouter`): sigmoid scores; the choice adds a
    per-expert correction bias, keeps the `topk_groups` best of G groups (a group scored by its two
    best experts) and picks the top-k inside them; the weights are the unbiased scores, renormalised
    when `renormalise`, times `scaling`."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        top_k: int,
        groups: int,
        topk_groups: int,
        renormalise: bool,
        scaling: float,
    ) -> None:
        super().__init__()
        self.weight = _frozen(weight)  # [E, H]
        self.bias = _frozen(bias)  # [E]
        self.width = top_k
        self.groups = groups
        self.topk_groups = topk_groups
        self.renormalise = renormalise
        self.scaling = scaling

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = F.linear(flat.float(), self.weight).sigmoid()  # [T, E]
        choice = scores + self.bias  # [T, E]
        grouped = choice.view(-1, self.groups, choice.shape[-1] // self.groups)  # [T, G, E/G]
        group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)  # [T, G]
        kept = torch.topk(group_scores, k=self.topk_groups, dim=-1, sorted=False)[1]  # [T, topk_groups]
        mask = torch.zeros_like(group_scores).scatter_(1, kept, 1)  # [T, G]
        mask = mask.unsqueeze(-1).expand_as(grouped).reshape(choice.shape)  # [T, E]
        choice = choice.masked_fill(~mask.bool(), float("-inf"))
        index = torch.topk(choice, k=self.width, dim=-1, sorted=False)[1]  # [T, K]
        weights = scores.gather(1, index)  # [T, K]
        if self.renormalise:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return index, weights * self.scaling


class WithShared(Router):
    """A routed router plus S shared-expert slices every token runs, as experts E..E+S-1.

    Their weight is sigmoid(gate . x) when the family gates its shared expert (Qwen2-MoE's
    `shared_expert_gate`), else 1 (DeepSeek-V3)."""

    shared: torch.Tensor
    """The shared slices' expert indices [S]: E..E+S-1."""

    def __init__(
        self, routed: Router, num_routed: int, slices: int, gate: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.routed = routed
        self.gate = None if gate is None else _frozen(gate)  # [1, H]
        self.slices = slices
        self.width = routed.width + slices
        self.register_buffer("shared", torch.arange(num_routed, num_routed + slices), persistent=False)  # [S]

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index, weights = self.routed(flat)  # [T, K], [T, K]
        tokens = int(flat.shape[0])
        if self.gate is None:
            shared_weights = torch.ones(tokens, self.slices, device=flat.device)  # [T, S]
        else:
            gate = torch.sigmoid(F.linear(flat.float(), self.gate))  # [T, 1]
            shared_weights = gate.expand(tokens, self.slices)  # [T, S]
        shared_index = self.shared.expand(tokens, self.slices)  # [T, S]
        return torch.cat([index, shared_index], dim=1), torch.cat([weights, shared_weights], dim=1)
