"""Section `bandwidth`: how close decoding comes to the memory-bandwidth bound.

Decode of one token streams every dense weight once and, per layer, the top_k routed experts'
weights; at batch 1 that traffic, not arithmetic, bounds the speed. The section measures the copy
bandwidth of a large tensor (read + write bytes / median seconds), computes each plan's bytes per
token from the profile's routing frequencies, and reports the tokens/s bound and the fraction of it
each plan achieves.
"""

from __future__ import annotations

from typing import Any

from moeqos.bench.metrics import bandwidth_bound, expert_bytes_per_token
from moeqos.bench.report import SectionResult, table
from moeqos.bench.timing import Timing, time_repeats

MIN_COPY_REPEATS = 5


def measure_copy_bandwidth(nbytes: int, repeats: int) -> tuple[float, Timing]:
    """Bytes/s of `dst.copy_(src)` on `nbytes` float32 tensors (each copy reads and writes nbytes)."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)  # [n]
    dst = torch.empty_like(src)  # [n]
    timing = time_repeats(lambda: dst.copy_(src), max(repeats, MIN_COPY_REPEATS), warmup=1)
    return 2 * src.numel() * 4 / timing.median, timing


def run(ctx: Any) -> SectionResult:
    """Measure bandwidth, then bound and achieved fraction for each reference plan and the knee."""
    bandwidth, timing = measure_copy_bandwidth(ctx.settings.bandwidth_bytes, ctx.settings.repeats)
    profile = ctx.profile
    expert_bytes = profile.expert_bytes()
    rows, data = [], []
    for name, plan in ctx.reference_plans(include_knee=True):
        experts = expert_bytes_per_token(profile.frequency, plan, expert_bytes)
        per_token = profile.model.dense_bytes + experts
        bound = bandwidth_bound(per_token, bandwidth)
        measured = ctx.decode_speed(plan).tokens_per_s
        rows.append([name, per_token / 2**20, experts / 2**20, bound, measured, measured / bound])
        data.append(
            {
                "plan": name,
                "spec": plan.to_spec(),
                "bytes_per_token": per_token,
                "expert_bytes_per_token": experts,
                "bound_tokens_per_s": bound,
                "measured_tokens_per_s": measured,
                "fraction_of_bound": measured / bound,
            }
        )
    notes = [
        f"copy bandwidth {bandwidth / 1e9:.2f} GB/s (read + write of "
        f"{ctx.settings.bandwidth_bytes >> 20} MiB, "
        f"median of {len(timing.samples)}, spread {timing.spread:.0%})",
        f"dense weights {profile.model.dense_bytes / 2**20:.1f} MiB per token; experts weighted by the "
        f"{profile.calibration_corpus} routing frequencies (top_k={profile.model.top_k} per layer)",
    ]
    columns = ["plan", "MiB/token", "expert MiB/token", "bound tok/s", "measured tok/s", "fraction"]
    result = SectionResult("bandwidth")
    result.tables.append(table("bandwidth: bytes per token and the tokens/s bound", columns, rows, notes))
    result.data = {"copy_bandwidth_bytes_per_s": bandwidth, "copy_timing": timing.to_dict(), "plans": data}
    return result
