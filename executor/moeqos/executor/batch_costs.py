"""The profile's batch timings (stage `batch`): how a decode step's cost grows with the streams in it
(moeqos.core.batch holds the results, moeqos.planner.batch_model the model they feed).

Two measurements, both small next to the one-stream ones:
- `batch_calls`: per profiled precision, the representative expert called on CALL_TOKENS tokens and on
  one, with cold caches (moeqos.executor.costs.cold_median_seconds); the ratio says how much a call's
  cost grows with its tokens (little while reading the weights dominates);
- `batch_steps`: for each of BATCH_ROWS, a decode step on that many rows (each row a different window
  of the calibration tokens, so the rows route like different streams), timed as
  moeqos.executor.costs.calibrate times one row: experts off (the dense part's growth), and with the
  served plan, each distinct routed expert of a step credited once at its calibrated one-token cost
  times its call growth (the measured rest over that credit is the step's `expert_scale`: what the
  batched MoE dispatch costs around the calls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from moeqos.core.batch import BatchCall, BatchStep
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost
from moeqos.core.tier import DISK
from moeqos.executor.costs import REPRESENTATIVE, cold_median_seconds
from moeqos.executor.measurement import Measurable
from moeqos.executor.step_timing import STEPS_PER_ROUND, CallSeconds, ExpertsOff, fastest_round

BATCH_ROWS = (4, 16)
"""Rows (streams) of the timed batch steps; the planner interpolates between them and one row."""
CALL_TOKENS = 16
"""Tokens of the timed many-token expert call."""
BATCH_ROUNDS = 3
"""Timed rounds per batch step measurement (fewer than one row's: a round of 16 rows costs more)."""
PROMPT_TOKENS = 8
"""Prompt tokens of each row before the timed steps."""


def batch_calls(
    runtime: Measurable, x: torch.Tensor, precisions: Sequence[Precision], repeats: int, group_size: int
) -> list[BatchCall]:
    """Per precision, on the device tier (disk experts are computed there too), a call on up to
    CALL_TOKENS of the hidden states `x` [N, H] over a call on one. None with fewer than 2 states."""
    device = runtime.config.device
    many = x[:CALL_TOKENS].to(device)  # [n, H]
    if len(many) < 2:
        return []
    one = many[:1]  # [1, H]
    calls = []
    for precision in precisions:
        variant = (*REPRESENTATIVE, precision, precision.group(group_size))
        module = runtime.factory.build(variant, device)
        single, batched = (cold_median_seconds(partial(module, t), repeats, device) for t in (one, many))
        calls.append(BatchCall(precision, device, len(many), max(batched / single, 1e-6)))
        runtime.factory.retire(variant, module)
    return calls


def batch_steps(
    runtime: Measurable,
    ids: list[int],
    fixed: float,
    costs: Sequence[CallCost],
    calls: Sequence[BatchCall],
    rows: Sequence[int] = BATCH_ROWS,
) -> list[BatchStep]:
    """A BatchStep per entry of `rows` from decode steps on windows of `ids` (see the module docstring),
    `fixed` the one-row experts-off step and `costs` the calibrated one-token call costs. With disk
    experts or precisions `costs` lacks in the served plan, the expert scale is 1 (nothing to scale)."""
    seconds = {(c.precision, c.tier): c.seconds for c in costs}
    growth = {(c.precision, c.tier): (c.ratio - 1.0) / (c.tokens - 1) for c in calls}
    plan = runtime.plan
    costed = all(a.tier != DISK and (a.precision, a.tier) in seconds for _, a in plan.items())
    device = runtime.config.device
    steps = []
    with runtime.exclusive():
        for count in rows:
            step = _batch_step(runtime, _windows(ids, count))
            off = fastest_round(step, BATCH_ROUNDS, device, ExpertsOff(runtime))
            scale = 1.0
            if costed:
                credit = BatchCredit(runtime, plan, seconds, growth)
                on_minus_credit = fastest_round(step, BATCH_ROUNDS, device, credit)
                per_step = credit.total / STEPS_PER_ROUND  # the routing repeats each step
                scale = min(max((on_minus_credit + per_step - off) / per_step, 0.2), 5.0)
            steps.append(BatchStep(count, max(off / fixed, 1e-6), scale))
    return steps


def measure_batch(
    runtime: Measurable,
    ids: list[int],
    x: torch.Tensor,
    precisions: Sequence[Precision],
    repeats: int,
    fixed: float,
    costs: Sequence[CallCost],
) -> tuple[list[BatchCall], list[BatchStep]]:
    """The stage `batch`: `batch_calls` on the hidden states `x` [N, H], then `batch_steps` on `ids`
    (none without call growths: a step's credit needs them)."""
    calls = batch_calls(runtime, x, precisions, repeats, runtime.plan.group_size)
    return calls, (batch_steps(runtime, ids, fixed, costs, calls) if calls else [])


def _windows(ids: list[int], count: int) -> list[list[int]]:
    """`count` prompts of PROMPT_TOKENS tokens, successive windows of `ids` (cycled when short)."""
    cycled = ids * (1 + count * PROMPT_TOKENS // max(len(ids), 1))
    return [cycled[i * PROMPT_TOKENS : (i + 1) * PROMPT_TOKENS] for i in range(count)]


def _batch_step(runtime: Measurable, prompts: list[list[int]]) -> Callable[[], object]:
    """One decode step for every row of a KV cache prefilled with `prompts` [B, P] (each call appends
    one token per row)."""
    cache = runtime.new_cache()
    runtime.forward_logits(torch.tensor(prompts), cache, keep=1)  # [B, P] -> [B, 1, V]
    tokens = torch.tensor([[p[-1]] for p in prompts])  # [B, 1]
    return lambda: runtime.forward_logits(tokens, cache, keep=1)


class BatchCredit(CallSeconds):
    """Experts on; credits each distinct routed expert of a step once, at its one-token cost times its
    growth for the tokens routed to it (what the planner's batch model predicts for that routing)."""

    def __init__(
        self,
        runtime: Measurable,
        plan: Plan,
        seconds: dict[tuple[Precision, str], float],
        growth: dict[tuple[Precision, str], float],
    ) -> None:
        super().__init__(runtime, plan, seconds)
        where = runtime.config.device
        self.growth = [[growth.get((a.precision, where), 0.0) for a in row] for row in plan.assignments]

    def observe(self, layer: int, hidden: torch.Tensor, index: torch.Tensor) -> None:
        experts, tokens = torch.unique(index, return_counts=True)  # [U], [U]
        for expert, n in zip(experts.tolist(), tokens.tolist(), strict=True):
            self.total += self.cost[layer][expert] * (1.0 + self.growth[layer][expert] * (n - 1))
