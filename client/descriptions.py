"""Conversions of the what-if model and hardware descriptions (planner.descriptions, plain dataclasses)
to and from planner.v1 messages; absent optional hardware fields take the dataclass defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

from moeqos.errors import InvalidArgument
from moeqos_proto.planner.v1 import planner_pb2 as pl
from planner.descriptions import HardwareDescription, ModelDescription, TierSpec

_POSITIVE_MODEL_FIELDS = (
    "num_layers",
    "num_experts",
    "hidden_size",
    "intermediate_size",
    "top_k",
    "vocab_size",
    "num_heads",
    "num_kv_heads",
)
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
    values = {f.name: getattr(message, f.name) for f in fields(ModelDescription)}
    if min(values[k] for k in _POSITIVE_MODEL_FIELDS) < 1:
        raise InvalidArgument(f"model description: {', '.join(_POSITIVE_MODEL_FIELDS)} must be positive")
    if values["num_kv_heads"] > values["num_heads"] or not math.isfinite(values["reference_perplexity"]):
        raise InvalidArgument(
            "model description: num_kv_heads must be <= num_heads, reference_perplexity finite"
        )
    if values["top_k"] > values["num_experts"] or values["reference_perplexity"] < 1:
        raise InvalidArgument("model description: top_k must be <= experts and reference_perplexity >= 1")
    return ModelDescription(**values)


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
