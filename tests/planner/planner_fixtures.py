"""Synthetic profiles with known coefficients, for the planner's tests."""

from __future__ import annotations

import math

import numpy as np
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.core.profile import CallCost, HardwareIdentity, LoadCost, ModelIdentity, Profile, QualityPoint
from moeqos.core.tier import TierBudget

HIDDEN, INTERMEDIATE = 256, 512
TRUE_BANDWIDTH = {"cpu": 10e9, "cuda:0": 100e9}
TRUE_OVERHEAD = {"cpu": 20e-6, "cuda:0": 5e-6}
TRUE_LOAD = (1e-3, 2e9)  # overhead s, bandwidth B/s
TRUE_COEFFICIENT = {
    Precision.INT8: 0.05,
    Precision.INT4_G32: 0.1,  # smaller groups quantize better: the group-size tests rely on the order
    Precision.INT4: 0.4,
    Precision.INT4_G128: 0.8,
    Precision.INT3: 1.5,
    Precision.INT2: 6.0,
}
REFERENCE_PPL = 12.0


def synthetic_profile(
    layers: int = 2,
    experts: int = 3,
    precisions: tuple[Precision, ...] = (Precision.BF16, Precision.INT4),
    tiers: tuple[str, ...] = ("cuda:0", "cpu"),
    seed: int = 0,
    noise: float = 0.0,
    quality_plans: int = 8,
    budgets: dict[str, int] | None = None,
    pool_slots: int = 0,
) -> Profile:
    """A profile whose call costs follow `TRUE_*` curves and perplexities the `TRUE_COEFFICIENT` model
    (multiplicative noise of relative size `noise`), with random frequencies and quantization errors."""
    rng = np.random.default_rng(seed)
    freq = rng.dirichlet(np.ones(experts), size=layers) * 2  # [L, E], rows sum to top_k = 2
    scale = {p: 0.0 if p.is_float else 0.02 * 2 ** (8 - p.bits) / layers for p in precisions}
    errors = {p: rng.uniform(0.5, 1.5, size=(layers, experts)) * scale[p] for p in precisions}
    model = ModelIdentity("synthetic", f"fp{seed}", layers, experts, 2, HIDDEN, INTERMEDIATE, 1000)
    calls = tuple(_call(p, t, rng, noise) for p in precisions for t in tiers if t != "disk")
    loads = tuple(_load(p, rng, noise) for p in precisions) if "disk" in tiers else ()
    profile = Profile(
        model,
        HardwareIdentity(tiers[0] if tiers[0] != "disk" else "cpu", "synthetic", "host", 2, "none"),
        "synthetic:train",
        1000,
        tuple(map(tuple, freq)),
        1e-3,
        calls,
        loads,
        {p: tuple(map(tuple, e)) for p, e in errors.items()},
        (),
        tuple(TierBudget(t, (budgets or {}).get(t, 10**12)) for t in tiers),
        pool_slots,
    )
    points = tuple(_quality_point(profile, rng, noise, i) for i in range(quality_plans))
    return _with_points(profile, points)


def _call(p: Precision, tier: str, rng: np.random.Generator, noise: float) -> CallCost:
    nbytes = expert_bytes(HIDDEN, INTERMEDIATE, p)
    seconds = (TRUE_OVERHEAD[tier] + nbytes / TRUE_BANDWIDTH[tier]) * (1 + noise * rng.standard_normal())
    return CallCost(p, tier, nbytes, seconds)


def _load(p: Precision, rng: np.random.Generator, noise: float) -> LoadCost:
    nbytes = expert_bytes(HIDDEN, INTERMEDIATE, p)
    return LoadCost(p, nbytes, (TRUE_LOAD[0] + nbytes / TRUE_LOAD[1]) * (1 + noise * rng.standard_normal()))


def true_log_increase(profile: Profile, plan: Plan) -> float:
    """The generating model's log-ppl increase of `plan` (no noise)."""
    return sum(
        TRUE_COEFFICIENT.get(a.precision, 0.0)
        * profile.frequency[layer][e]
        * profile.quant_error[a.precision][layer][e]
        for (layer, e), a in plan.items()
    )


def _quality_point(profile: Profile, rng: np.random.Generator, noise: float, index: int) -> QualityPoint:
    m, precisions = profile.model, profile.precisions
    if index == 0:
        plan = Plan.uniform(m.num_layers, m.num_experts, precisions[0], profile.hardware.device)
    else:
        rows = rng.choice(len(precisions), size=(m.num_layers, m.num_experts))
        plan = Plan(
            tuple(
                tuple(Plan.uniform(1, 1, precisions[k], profile.hardware.device)[0, 0] for k in row)
                for row in rows
            )
        )
    ppl = (
        REFERENCE_PPL
        * math.exp(true_log_increase(profile, plan))
        * (1 + (noise * rng.standard_normal() if index else 0))
    )
    return QualityPoint(plan.to_spec(), ppl, "synthetic:valid", 1000)


def _with_points(profile: Profile, points: tuple[QualityPoint, ...]) -> Profile:
    data = profile.to_dict()
    data["quality_points"] = [p.__dict__ for p in points]
    return Profile.from_dict(data)
