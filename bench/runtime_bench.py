"""Decode speed of the executor runtime against stock transformers, with the bandwidth bound.

    python -m bench.runtime_bench --model DIR [--tokens 32] [--repeats 3] [--threads N] [--json]

The baseline is transformers' `MixtralForCausalLM` in fp32 with greedy `generate`; the runtime serves
all-bf16, all-int8 and all-int4 plans (dense weights in --dense precision). Both rates count tokens
after the first over the time after the first (median of --repeats runs after one warm-up). Bytes
per token = dense weights + top_k experts per layer; the bound = measured copy bandwidth / bytes.
Goals (from the issue): all-16-bit >= baseline, all-int4 >= 2.5x baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.bandwidth import measure_copy_bandwidth
from moeqos.precision import Precision

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)
PROMPT = "The history of the city begins with"


class _Clock:
    """A transformers streamer stamping each generated token (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._seen_prompt = False

    def put(self, value: Any) -> None:
        if self._seen_prompt:
            self.stamps.append(time.perf_counter())
        self._seen_prompt = True

    def end(self) -> None:
        """Nothing to flush."""


def _rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def baseline(model_dir: Path, prompt: list[int], tokens: int, repeats: int) -> tuple[float, int]:
    """Median decode tokens/s of fp32 transformers, and its bytes of weights read per token."""
    import torch
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    config = model.config
    rates = []
    for _ in range(repeats + 1):
        clock = _Clock()
        with torch.inference_mode():
            model.generate(
                torch.tensor([prompt]),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=config.eos_token_id,
            )
        rates.append(_rate(clock.stamps))
    expert = 3 * config.hidden_size * config.intermediate_size * 4
    experts_total = expert * config.num_local_experts * config.num_hidden_layers
    dense = sum(p.numel() * 4 for p in model.parameters()) - experts_total
    return statistics.median(
        rates[1:]
    ), dense + config.num_experts_per_tok * config.num_hidden_layers * expert


def runtime_rates(
    model_dir: Path, dense: str, prompt: list[int], tokens: int, repeats: int
) -> dict[str, tuple[float, int]]:
    """Median decode tokens/s and bytes per token of the runtime for each uniform plan."""
    from executor.config import ExecutorConfig
    from executor.generation import SamplingParams
    from executor.runtime import ExecutorRuntime
    from moeqos.plan import Plan

    runtime = ExecutorRuntime.load(ExecutorConfig(model_dir=model_dir, dense_precision=dense))  # type: ignore[arg-type]
    identity = runtime.model
    results: dict[str, tuple[float, int]] = {}
    for precision in PRECISIONS:
        runtime.apply_plan(
            Plan.uniform(identity.num_layers, identity.num_experts, precision, runtime.default_tier)
        )
        rates = []
        for _ in range(repeats + 1):
            events = list(runtime.generate(prompt, SamplingParams(max_tokens=tokens)))
            rates.append(events[-1].stats.tokens_per_s)  # type: ignore[union-attr]
        experts = identity.top_k * identity.num_layers * identity.expert_bytes(precision)
        results[precision.value] = (statistics.median(rates[1:]), identity.dense_bytes + experts)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--dense", default="bf16", help="dense precision of the runtime (fp32/bf16/fp16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(str(args.model)).encode(PROMPT)
    bandwidth, _ = measure_copy_bandwidth(1 << 28, 5)
    rows = {"transformers-fp32": baseline(args.model, prompt, args.tokens, args.repeats)}
    rows.update(
        {
            f"runtime-{p}": v
            for p, v in runtime_rates(args.model, args.dense, prompt, args.tokens, args.repeats).items()
        }
    )
    base = rows["transformers-fp32"][0]
    report: list[dict[str, Any]] = [
        {
            "name": name,
            "tokens_per_s": rate,
            "ratio": rate / base,
            "bytes_per_token": nbytes,
            "bound_tokens_per_s": bandwidth / nbytes,
            "fraction_of_bound": rate * nbytes / bandwidth,
        }
        for name, (rate, nbytes) in rows.items()
    ]
    if args.json:
        print(json.dumps({"bandwidth_bytes_per_s": bandwidth, "rows": report}, indent=2))
        return 0
    print(
        f"copy bandwidth {bandwidth / 1e9:.2f} GB/s; goals: runtime-bf16 ratio >= 1, runtime-int4 ratio >= 2.5"
    )
    print(f"{'plan':20} {'tok/s':>8} {'ratio':>6} {'MB/token':>9} {'bound tok/s':>12} {'of bound':>9}")
    for row in report:
        print(
            f"{row['name']:20} {row['tokens_per_s']:8.2f} {row['ratio']:6.2f} {row['bytes_per_token'] / 1e6:9.1f} "
            f"{row['bound_tokens_per_s']:12.1f} {row['fraction_of_bound']:9.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
