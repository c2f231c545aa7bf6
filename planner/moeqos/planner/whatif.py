"""What-if planning without an executor: an analytic `Profile` from model and hardware descriptions.

Costs are bandwidth/compute bound, per expert call for one decode token:
- device tier: `call_overhead + max(bytes / device bandwidth, flops / device_flops)`;
- host RAM (`cpu` when the device is a GPU): with `host_compute`, computed on the CPU at host
  bandwidth, `host_call_overhead + max(bytes / host bandwidth, flops / host_flops)`; otherwise copied
  over the link and computed on the device, `bytes / link + device cost`;
- disk: loaded into a pool slot on the device at `min(disk, link)` bandwidth plus a latency, then
  computed on the device (the LRU pool's hit rate is the latency model's business).
`flops = 6 * hidden * intermediate` (three matrix-vector products). Dequantisation work is not
modelled: on GPUs it hides under memory time; on CPUs it does not, so CPU int4/int3/int2 are optimistic.
Fixed time per token = `layers * layer_overhead + dense bytes / device bandwidth`; the attention and
head are plan elements too, with their real byte sizes (moeqos.planner.whatif_dense).

Frequencies are *mildly skewed*, not measured: in layer l, expert e gets weight
`1 + skew * cos(2 pi (e + l) / E)` (default skew 0.25, i.e. the hottest expert of a layer is called
~1.7x as often as the coldest), normalised so each row sums to top_k. Quantization errors are not
known, so the quality model falls back to its priors (moeqos.planner.priors), scaled by call share, and every
predicted perplexity is an estimate relative to the model's published reference (`reference_source`).

Budgets: a tier's expert budget is its capacity, less on the device the dense weights (as the executor
holds them, moeqos.core.precision.dense_bytes: bf16, routers fp32), the `reserve_bytes` for KV cache/activations and the disk pool's slots (the largest allowed expert each).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
from moeqos.core.descriptions import HardwareDescription, ModelDescription
from moeqos.core.errors import InvalidArgument
from moeqos.core.precision import Precision
from moeqos.core.profile import CallCost, HardwareIdentity, LoadCost, Profile, QualityPoint
from moeqos.core.tier import DISK, TierBudget
from moeqos.planner.catalog import HARDWARE, MODELS
from moeqos.planner.whatif_dense import whatif_dense_costs

WHATIF_PRECISIONS = (
    Precision.BF16,
    Precision.INT8,
    Precision.INT4_G32,
    Precision.INT4,
    Precision.INT4_G128,
    Precision.INT3,
    Precision.INT2,
)
"""The precisions a what-if profile offers: int4 with groups of 32, 64 and 128 (the bytes of their scales
and zeros in each expert's size, their quality from moeqos.planner.priors), int3 and int2 bit-packed."""
DEFAULT_SKEW = 0.25

__all__ = [
    "HARDWARE",
    "MODELS",
    "WHATIF_PRECISIONS",
    "analytic_profile",
    "builtin_hardware",
    "hardware_named",
    "hardware_template",
    "model_named",
    "whatif_profile",
]


def model_named(name: str) -> ModelDescription:
    """A built-in model description by name; InvalidArgument listing the built-in names otherwise."""
    if name not in MODELS:
        raise InvalidArgument(f"unknown model {name!r}; built in: {', '.join(MODELS)}")
    return MODELS[name]


def builtin_hardware(name: str) -> HardwareDescription:
    """A built-in hardware description by name; InvalidArgument listing the built-in names otherwise
    (never a file: a remote caller must not be able to make the server open one)."""
    if name not in HARDWARE:
        raise InvalidArgument(f"unknown hardware {name!r}; built in: {', '.join(HARDWARE)}")
    return HARDWARE[name]


def hardware_named(name: str) -> HardwareDescription:
    """A built-in hardware description by name, or one loaded from a JSON file path (InvalidArgument
    for an unknown name or a file that is missing or not a hardware description)."""
    if name in HARDWARE or not name.endswith(".json"):
        try:
            return builtin_hardware(name)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{exc} (or a .json file)") from None
    try:
        return HardwareDescription.load(name)
    except OSError as exc:
        raise InvalidArgument(f"cannot read hardware file {name!r}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            f"{name} is not a hardware description ({exc}); `moeqos whatif --hardware-template` prints one"
        ) from None


def hardware_template() -> dict[str, Any]:
    """A hardware description as JSON-ready data with every field filled in (from `a100-80gb`), to edit
    and pass back with `--hardware FILE.json`. Sizes are bytes, bandwidths bytes/s, times seconds."""
    notes = "copied from a100-80gb: edit the numbers to describe your machine"
    return {**asdict(HARDWARE["a100-80gb"]), "name": "my-machine", "notes": notes}


def analytic_profile(
    model: ModelDescription,
    hardware: HardwareDescription,
    precisions: tuple[Precision, ...] = WHATIF_PRECISIONS,
    skew: float = DEFAULT_SKEW,
) -> Profile:
    """A Profile derived from the descriptions (see module docstring for every assumption)."""
    tiers = [t.name for t in hardware.tiers]
    calls = tuple(
        CallCost(p, t, model.expert_bytes(p), _call_seconds(model, hardware, p, t))
        for p in precisions
        for t in tiers
        if t != DISK
    )
    loads = tuple(
        LoadCost(p, model.expert_bytes(p), _load_seconds(model, hardware, p))
        for p in precisions
        if DISK in tiers
    )
    reference = QualityPoint(
        f"bf16@{hardware.device}", model.reference_perplexity, f"published: {model.reference_source}", 0
    )
    return Profile(
        model=model.identity(),
        hardware=HardwareIdentity(hardware.device, f"analytic:{hardware.name}", "what-if", 0, "none"),
        calibration_corpus=f"analytic: frequencies mildly skewed ({skew:g}), not measured",
        calibration_tokens=0,
        frequency=_frequencies(model, skew),
        fixed_seconds=_fixed_seconds(model, hardware),
        call_costs=calls,
        load_costs=loads,
        quality_points=(reference,),
        tiers=expert_budgets(model, hardware, precisions),
        disk_pool_slots=hardware.disk_pool_slots if DISK in tiers else 0,
        dense_costs=whatif_dense_costs(model, hardware),
        dense_precision=Precision.BF16,
    )


def whatif_profile(
    model: ModelDescription,
    hardware: HardwareDescription,
    capacities: dict[str, int] | None = None,
    skew: float = DEFAULT_SKEW,
) -> Profile:
    """`analytic_profile` on `hardware` with some tiers' *memory* replaced (`{"cuda:0": 24 GiB}`): the
    profile's tier budgets are then what is left for experts (see module docstring). InvalidArgument
    when the descriptions do not combine into finite costs (e.g. a zero link bandwidth that host
    experts must be copied over)."""
    try:
        profile = analytic_profile(model, hardware.with_capacities(capacities or {}), skew=skew)
    except (ArithmeticError, KeyError, ValueError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"the model and hardware descriptions do not combine: {exc}") from None
    costs = [
        profile.fixed_seconds,
        *(c.seconds for c in profile.call_costs),
        *(c.seconds for c in profile.load_costs),
    ]
    if not all(math.isfinite(c) and c >= 0 for c in costs):
        raise InvalidArgument(
            "the model and hardware descriptions give non-finite costs; check bandwidths and rates"
        )
    return profile


def expert_budgets(
    model: ModelDescription,
    hardware: HardwareDescription,
    precisions: tuple[Precision, ...] = WHATIF_PRECISIONS,
) -> tuple[TierBudget, ...]:
    """Per tier, bytes left for experts (see module docstring)."""
    pool = hardware.disk_pool_slots * max(model.expert_bytes(p) for p in precisions)
    has_disk = any(t.name == DISK for t in hardware.tiers)
    out = []
    for tier in hardware.tiers:
        taken = 0
        if tier.name == hardware.device:
            taken = model.identity().dense_bytes + hardware.reserve_bytes + (pool if has_disk else 0)
        out.append(TierBudget(tier.name, max(0, tier.capacity_bytes - taken)))
    return tuple(out)


def _frequencies(model: ModelDescription, skew: float) -> tuple[tuple[float, ...], ...]:
    """[L, E + S]: the routed experts' skewed shares of top_k, then 1.0 for each shared slice."""
    e = np.arange(model.num_experts)  # [E]
    shared = (1.0,) * model.shared_experts  # every token runs them
    rows = []
    for layer in range(model.num_layers):
        weight = 1 + skew * np.cos(2 * math.pi * (e + layer) / model.num_experts)  # [E]
        rows.append(tuple(float(x) for x in model.top_k * weight / weight.sum()) + shared)
    return tuple(rows)


def _flops(model: ModelDescription) -> float:
    return 6.0 * model.hidden_size * model.intermediate_size


def _device_seconds(model: ModelDescription, hw: HardwareDescription, p: Precision) -> float:
    bandwidth = hw.tier(hw.device).bandwidth_bps
    return hw.call_overhead_s + max(model.expert_bytes(p) / bandwidth, _flops(model) / hw.device_flops)


def _call_seconds(model: ModelDescription, hw: HardwareDescription, p: Precision, tier: str) -> float:
    if tier == hw.device:
        return _device_seconds(model, hw, p)
    nbytes = model.expert_bytes(p)
    if hw.host_compute:
        return hw.host_call_overhead_s + max(
            nbytes / hw.tier(tier).bandwidth_bps, _flops(model) / hw.host_flops
        )
    return nbytes / hw.link_bandwidth_bps + _device_seconds(model, hw, p)


def _load_seconds(model: ModelDescription, hw: HardwareDescription, p: Precision) -> float:
    read = hw.tier(DISK).bandwidth_bps
    bandwidth = min(read, hw.link_bandwidth_bps) if hw.link_bandwidth_bps else read
    return hw.disk_latency_s + model.expert_bytes(p) / bandwidth


def _fixed_seconds(model: ModelDescription, hw: HardwareDescription) -> float:
    dense = model.identity().dense_bytes / hw.tier(hw.device).bandwidth_bps
    return model.num_layers * hw.layer_overhead_s + dense
