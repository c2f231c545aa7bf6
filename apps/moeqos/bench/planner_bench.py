"""Planner speed: median solve time and 50-point frontier time on what-if and measured-like instances.

Run: `/work/venv/bin/python -m moeqos.bench.planner_bench [--repeats 5] [--points 50]`. Goals (issue): a
Mixtral-8x7B-sized instance (32 layers x 8 experts x 5 precisions x 3 tiers) solves in < 200 ms and
a 50-point frontier in < 5 s on the 2-core dev machine. "what-if" instances have few distinct experts
(the aggregation makes them small); "measured-like" ones perturb every expert's frequency and give
each its own quantization error, as a real profile would, so the MILP keeps one binary per
(expert, option).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from moeqos.core.profile import Profile
from moeqos.core.qos import QosTarget
from moeqos.planner.frontier import frontier
from moeqos.planner.latency_model import LatencyModel
from moeqos.planner.quality_model import QualityModel
from moeqos.planner.report import table
from moeqos.planner.solver import PlanRequest, solve
from moeqos.planner.whatif import HARDWARE, MODELS, WHATIF_PRECISIONS, analytic_profile

GIB = 2**30


def instances() -> list[tuple[str, Profile]]:
    a100 = HARDWARE["a100-80gb"].with_capacities({"cuda:0": 24 * GIB, "cpu": 64 * GIB})
    default = analytic_profile(MODELS["smollm2-135m-moe8"], HARDWARE["cpu-2core"])
    mixtral = analytic_profile(MODELS["mixtral-8x7b"], a100)
    big = analytic_profile(MODELS["mixtral-8x22b"], HARDWARE["a100-80gb"].with_capacities({"cpu": 192 * GIB}))
    return [
        ("smollm2-135m-moe8 / cpu-2core, what-if", default),
        ("smollm2-135m-moe8 / cpu-2core, measured-like", measured_like(default)),
        ("mixtral-8x7b / a100 24+64 GiB, what-if", mixtral),
        ("mixtral-8x7b / a100 24+64 GiB, measured-like", measured_like(mixtral)),
        ("mixtral-8x22b / a100 80+192 GB, what-if", big),
        ("mixtral-8x22b / a100 80+192 GB, measured-like", measured_like(big)),
    ]


def measured_like(profile: Profile, seed: int = 0) -> Profile:
    """`profile` with per-expert frequencies (lognormal, sigma 0.5) and per-expert quantization errors."""
    rng = np.random.default_rng(seed)
    freq = np.asarray(profile.frequency) * rng.lognormal(0, 0.5, size=np.shape(profile.frequency))  # [L, E]
    freq *= profile.model.top_k / freq.sum(axis=1, keepdims=True)
    errors = {
        p: tuple(map(tuple, rng.uniform(0.5, 1.5, size=freq.shape) * 2.0**-p.bits)) for p in WHATIF_PRECISIONS
    }
    return replace(profile, frequency=tuple(map(tuple, freq)), quant_error=errors)


def median_seconds(action: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of `action`; on a shared machine CPU time is the steadier one."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def bench(name: str, profile: Profile, repeats: int, points: int) -> list[str]:
    started = time.perf_counter()
    latency, quality = LatencyModel.fit(profile), QualityModel.fit(profile)
    fit_ms = (time.perf_counter() - started) * 1e3
    front_s = median_seconds(lambda: frontier(profile, points=points, latency=latency, quality=quality), 1)
    front = frontier(profile, points=5, latency=latency, quality=quality)
    mid_tps = (front[0].predicted_tokens_per_s + front[-1].predicted_tokens_per_s) / 2
    mid_ppl = (front[0].predicted_perplexity + front[-1].predicted_perplexity) / 2
    floor = PlanRequest(profile, QosTarget(min_tokens_per_s=mid_tps))
    ceiling = PlanRequest(profile, QosTarget(max_perplexity=mid_ppl))
    floor_s = median_seconds(lambda: solve(floor, latency, quality), repeats)
    ceiling_s = median_seconds(lambda: solve(ceiling, latency, quality), repeats)
    m = profile.model
    shape = f"{m.num_layers}x{m.num_experts}x{len(profile.precisions)}x{len(profile.tiers)}"
    span = f"{front[0].predicted_tokens_per_s:.2f}-{front[-1].predicted_tokens_per_s:.2f}"
    ms = [
        f"{floor_s[0] * 1e3:.0f} / {floor_s[1] * 1e3:.0f}",
        f"{ceiling_s[0] * 1e3:.0f} / {ceiling_s[1] * 1e3:.0f}",
    ]
    return [name, shape, f"{fit_ms:.0f}", *ms, f"{front_s[0]:.2f} / {front_s[1]:.2f}", span]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--points", type=int, default=50)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    header = (
        "instance (times: wall / cpu)",
        "LxExPxT",
        "fit ms",
        "solve ms (floor)",
        "solve ms (ceiling)",
        f"frontier {args.points} pts s",
        "tok/s span",
    )
    rows = [bench(name, profile, args.repeats, args.points) for name, profile in instances()]
    print(table(header, rows))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
