"""Section `baseline`: the executor against stock transformers on the same checkpoint and prompt.

The baseline is `MixtralForCausalLM.from_pretrained(model_dir)` in fp32 with greedy `generate`; the
executor runs full precision (bf16 experts), all-int8, all-int4 and the frontier's knee. Both count
decode tokens/s the same way: tokens after the first over the time after the first (see
moeqos.bench.timing.decode_rate), median of the same number of runs of the same token count.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from moeqos.bench.metrics import ratio
from moeqos.bench.report import Goal, SectionResult, table
from moeqos.bench.timing import decode_rate

FULL_PRECISION_GOAL = 1.0
INT4_GOAL = 2.5


class _TokenClock:
    """A transformers streamer that stamps the time of every generated token (the first `put` is the
    prompt, so it is skipped)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        """Called by generate when it finishes; nothing to flush."""


def transformers_rates(ctx: Any) -> tuple[float, ...]:
    """Decode tokens/s of fp32 transformers greedy generation: one warm-up, then `repeats` runs."""
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(str(ctx.model_dir), dtype=torch.float32).eval()
    prompt = torch.tensor([ctx.prompt_ids])  # [1, P]
    _generate_rate(model, prompt, ctx.settings.decode_tokens)
    rates = tuple(
        _generate_rate(model, prompt, ctx.settings.decode_tokens) for _ in range(ctx.settings.repeats)
    )
    del model  # a few GB on the default model; free it before the executor runs again
    gc.collect()
    return rates


def _generate_rate(model: Any, prompt: Any, tokens: int) -> float:
    """One greedy generation of exactly `tokens` tokens; its decode rate after the first token."""
    import torch

    clock = _TokenClock()
    with torch.inference_mode():
        model.generate(
            prompt,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            streamer=clock,
            pad_token_id=model.config.eos_token_id,
        )
    return decode_rate(len(clock.stamps), clock.stamps[0], clock.stamps[-1])


def run(ctx: Any) -> SectionResult:
    """Measure the baseline and the executor's reference plans; report ratios."""
    baseline_rates = transformers_rates(ctx)
    baseline = statistics.median(baseline_rates)
    rows: list[list[Any]] = [["transformers fp32 generate", baseline, 1.0]]
    data: dict[str, Any] = {"transformers_fp32": {"tokens_per_s": baseline, "samples": list(baseline_rates)}}
    for name, plan in ctx.reference_plans(include_knee=True):
        speed = ctx.decode_speed(plan)
        rows.append([f"executor {name}", speed.tokens_per_s, ratio(speed.tokens_per_s, baseline)])
        data[name] = {"spec": plan.to_spec(), **speed.to_dict(), "ratio": ratio(speed.tokens_per_s, baseline)}
    s = ctx.settings
    notes = [
        f"greedy, {s.decode_tokens} tokens after a {len(ctx.prompt_ids)}-token ptb:test prompt; median of "
        f"{s.repeats} runs after one warm-up; executor dense weights bf16, router fp32"
    ]
    result = SectionResult("baseline", data=data)
    result.tables.append(
        table("baseline: decode tokens/s vs transformers", ["engine", "tok/s", "x baseline"], rows, notes)
    )
    full, int4 = data["all-bf16"]["ratio"], data["all-int4"]["ratio"]
    result.goals += [
        Goal(
            "all-bf16 vs transformers fp32", f">= {FULL_PRECISION_GOAL:g}x", full, full >= FULL_PRECISION_GOAL
        ),
        Goal("all-int4 vs transformers fp32", f">= {INT4_GOAL:g}x", int4, int4 >= INT4_GOAL),
    ]
    return result
