"""The profile's `dense` stage: what each dense element costs in each precision (moeqos.core.dense).

Per element and precision:
- `seconds`: in the dense precision, one decode token's pass over the element's matrices (every
  q/k/v/o projection of every layer, or the head) on a one-token input in the dense dtype, timed cold
  like the expert call costs (moeqos.executor.costs.cold_median_seconds: decode streams these weights
  from memory every token); in another precision, that plus what the element in it adds to a whole
  decode step, from pairs of steps with it turned in and out (moeqos.executor.step_timing.
  paired_steps; the planner prices only the difference). Cold single passes said int8 attention and
  head save 6 ms a token on the default model, where bf16 computes from oneDNN's prepacked layout and
  whole steps ran no faster: the frontier's throughput error was 51%;
- `log_ppl`: log(perplexity of the served plan with only this element in this precision / perplexity of
  the served plan), on the quality tokens; 0 in the dense precision. The served plan's experts stay as
  they are (no expert is rebuilt), and the planner adds the term to the experts' (additive in log-ppl,
  as the experts' terms are);
- `bytes`: the byte contract's (moeqos.core.dense.DenseShapes.element_bytes).
A lossy element is built once (Measurable.alternating) for its pairs and its perplexity; the modules
are dropped after, and the served plan is back: nothing served changes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from moeqos.core.dense import DenseCost, DenseElement
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.costs import cold_median_seconds
from moeqos.executor.evaluation import evaluate
from moeqos.executor.loader import TORCH_DTYPES
from moeqos.executor.measurement import Measurable
from moeqos.executor.step_timing import (
    PAIRS,
    STEP_PROMPT_TOKENS,
    RoundMode,
    TurnedIn,
    decode_step,
    paired_steps,
)

Progress = Callable[[str, float], None]

DENSE_PRECISIONS = (Precision.INT8, Precision.INT4)
"""The lossy precisions a dense element is profiled in (besides the dense precision): int3/int2 are
smaller than int4 but slower (their kernel unpacks to int4's) and far worse at round-to-nearest; the
planner prices them from int4's measurement at their own bytes (moeqos.planner.dense_model)."""


def dense_costs(
    runtime: Measurable,
    precisions: Sequence[Precision],
    ids: list[int],
    window: int,
    repeats: int,
    progress: Progress,
    base: float | None = None,
) -> tuple[DenseCost, ...]:
    """DenseCosts of every element in the dense precision and each of `precisions` (see the module
    docstring), perplexities on `ids` in windows of `window` tokens; `base`: the served plan's
    perplexity there when the caller measured it already (else measured here)."""
    part, served = runtime.dense, runtime.plan
    dense = part.dense
    wanted = [dense, *(p for p in precisions if p != dense)]
    table = part.table(served.group_size)
    if base is None:
        base = evaluate(runtime, ids, served.with_dense(()), window, None, 0).perplexity
    costs = []
    steps = len(DenseElement) * len(wanted)
    for element in DenseElement:
        own = _element_seconds(runtime, served.with_dense(()), element, repeats)
        for precision in wanted:
            plan = served.with_dense(() if precision == dense else ((element, precision),))
            added, log_ppl = (
                _turned_in(runtime, plan, ids, window, base) if precision != dense else (0.0, 0.0)
            )
            # no precision makes the element cost less than nothing: a larger saving is the pairs' noise
            # (on a tiny model the element's own pass is microseconds, the noise a fraction of a ms)
            seconds = max(own + added, 0.0)
            costs.append(DenseCost(element, precision, table.bytes[element][precision], seconds, log_ppl))
            progress("dense", len(costs) / steps)
    return tuple(costs)


def _turned_in(
    runtime: Measurable, plan: Plan, ids: list[int], window: int, base: float
) -> tuple[float, float]:
    """(seconds a decode step with `plan`'s dense part takes over one of the served plan, the median of
    pairs; log(perplexity of `plan` on `ids` / `base`)), the element built once for both: turned in
    and out for the pairs, then in while the perplexity is measured (`evaluate` sees the plan served)."""
    device = runtime.config.device
    with runtime.alternating(plan) as turn, runtime.exclusive():  # the apply lock first
        step = decode_step(runtime, ids[:STEP_PROMPT_TOKENS])
        pairs = paired_steps(
            step, PAIRS, device, RoundMode(runtime), TurnedIn(runtime, turn, RoundMode(runtime))
        )
        turn(True)
        perplexity = evaluate(runtime, ids, plan, window, None, 0).perplexity
    return statistics.median(pair.added for pair in pairs), math.log(perplexity / base)


def _element_seconds(runtime: Measurable, plan: Plan, element: DenseElement, repeats: int) -> float:
    """Cold median seconds of one token through every matrix of `element` as `plan` has it."""
    part, device = runtime.dense, runtime.config.device
    modules = part.build(plan, [element])  # slot name -> module, built aside
    dtype = TORCH_DTYPES.get(part.dense, torch.bfloat16)
    inputs = {name: torch.randn(1, part.shapes_of[name][1], dtype=dtype, device=device) for name in modules}

    def one_token() -> None:
        for name, module in modules.items():
            module(inputs[name])  # [1, in] -> [1, out]

    with torch.inference_mode():
        return cold_median_seconds(one_token, repeats, device)
