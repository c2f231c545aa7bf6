"""Conversions of the what-if model and hardware descriptions (moeqos.core.descriptions, plain dataclasses)
to and from planner.v1 messages; absent optional hardware fields take the dataclass defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

from moeqos.core.descriptions import HardwareDescription, ModelDescription, TierSpec
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.proto.planner.v1 import planner_pb2 as pl

POSITIVE_MODEL_FIELDS = (
    "num_layers",
    "num_experts",
    "hidden_size",
    "intermediate_size",
    "top_k",
    "vocab_size",
    "num_heads",
    "num_kv_heads",
)
"""ModelDescription fields that must be at least 1."""
MAX_MODEL_EXPERTS = 1 << 16
"""Most experts (num_layers * num_experts) a described model may have: the planner holds arrays of that
size per precision and tier, so a larger one would make it allocate without bound."""
MAX_MODEL_WIDTH = 1 << 20
"""Largest hidden, intermediate and vocab size of a described model: beyond it the byte counts a profile
carries (uint64 on the wire) can overflow."""
_WIDTH_FIELDS = ("hidden_size", "intermediate_size", "vocab_size")
_OPTIONAL_HARDWARE = (
    "link_bandwidth_bps",
    "host_compute",
    "call_overhead_s",
    "host_call_overhead_s",
    "layer_overhead_s",
    "reserve_bytes",
    "disk_latency_s",
    "disk_pool_slots",
)


def model_to_proto(model: ModelDescription) -> pl.ModelDescription:
    return pl.ModelDescription(**asdict(model))


def model_from_proto(message: pl.ModelDescription) -> ModelDescription:
    """A validated description; InvalidArgument on bad numbers, OutOfRange on a model too large to plan."""
    values = {f.name: getattr(message, f.name) for f in fields(ModelDescription)}
    if min(values[k] for k in POSITIVE_MODEL_FIELDS) < 1:
        raise InvalidArgument(f"model description: {', '.join(POSITIVE_MODEL_FIELDS)} must be positive")
    if values["num_kv_heads"] > values["num_heads"] or not math.isfinite(values["reference_perplexity"]):
        raise InvalidArgument(
            "model description: num_kv_heads must be <= num_heads, reference_perplexity finite"
        )
    if values["top_k"] > values["num_experts"] or values["reference_perplexity"] < 1:
        raise InvalidArgument("model description: top_k must be <= experts and reference_perplexity >= 1")
    _check_size(values)
    return ModelDescription(**values)


def _check_size(values: dict[str, Any]) -> None:
    """OutOfRange for a model too large to plan for (checked here, at the edge, before any allocation)."""
    experts = values["num_layers"] * values["num_experts"]
    if experts > MAX_MODEL_EXPERTS:
        raise OutOfRange(
            f"model description: num_layers * num_experts must be <= {MAX_MODEL_EXPERTS}, got {experts}"
        )
    for name in _WIDTH_FIELDS:
        if values[name] > MAX_MODEL_WIDTH:
            raise OutOfRange(f"model description: {name} must be <= {MAX_MODEL_WIDTH}, got {values[name]}")


def hardware_to_proto(hardware: HardwareDescription) -> pl.HardwareDescription:
    data: dict[str, Any] = asdict(hardware)
    data.pop("notes", None)
    data["tiers"] = [pl.TierSpec(**t) for t in data["tiers"]]
    return pl.HardwareDescription(**data)


def hardware_from_proto(message: pl.HardwareDescription) -> HardwareDescription:
    """A validated description; InvalidArgument on unknown tiers, a missing device tier or bad numbers."""
    try:
        tiers = tuple(TierSpec(t.name, t.capacity_bytes, t.bandwidth_bps) for t in message.tiers)
    except ValueError as exc:
        raise InvalidArgument(f"hardware description: {exc}") from None
    if message.device not in {t.name for t in tiers} or any(not t.bandwidth_bps > 0 for t in tiers):
        raise InvalidArgument(
            "hardware description: the device must be one of the tiers, bandwidths positive"
        )
    if not (message.device_flops > 0 and message.host_flops > 0):
        raise InvalidArgument("hardware description: device_flops and host_flops must be positive")
    optional = {name: getattr(message, name) for name in _OPTIONAL_HARDWARE if message.HasField(name)}
    for name, value in optional.items():
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"hardware description: {name} must be a finite number >= 0, got {value}")
    return HardwareDescription(
        message.name, message.device, tiers, message.device_flops, message.host_flops, **optional
    )
