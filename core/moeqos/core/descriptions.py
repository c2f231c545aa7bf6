"""Model and hardware descriptions for what-if planning without an executor (plain data, JSON-loadable)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moeqos.core.precision import Precision, dense_bytes, expert_bytes
from moeqos.core.profile import ModelIdentity
from moeqos.core.tier import validate_tier


@dataclass(frozen=True)
class ModelDescription:
    """The shape of a MoE model with SwiGLU experts and grouped-query attention (Mixtral, Qwen-MoE,
    OLMoE, Granite-MoE). `num_experts` and `top_k` count routed experts; a shared expert is
    `shared_experts` slices of a routed expert's size that every token runs (as the executor plans it:
    moeqos.executor.adapters), so `identity()` counts them in both."""

    name: str
    num_layers: int
    num_experts: int
    hidden_size: int
    intermediate_size: int
    top_k: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    tied_embeddings: bool = False
    reference_perplexity: float = 0.0
    """Full-precision perplexity used as the what-if quality reference (not measured here)."""
    reference_source: str = ""
    shared_experts: int = 0
    """Shared-expert slices per layer (the shared expert's intermediate size over `intermediate_size`)."""
    head_dim: int = 0
    """Width of one attention head; 0: hidden_size / num_heads."""

    @property
    def dense_params(self) -> int:
        """Non-expert, non-router parameters: attention (q, o: H*heads*d; k, v: H*kv*d, d the head
        width), the two norms of each layer and the final norm, embeddings and head (once when tied)."""
        h = self.hidden_size
        d = self.head_dim or h // self.num_heads
        attention = 2 * h * self.num_heads * d + 2 * h * self.num_kv_heads * d
        embeddings = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return self.num_layers * (attention + 2 * h) + h + embeddings

    @property
    def router_params(self) -> int:
        """The routers' weights: one [experts, H] matrix per layer."""
        return self.num_layers * self.num_experts * self.hidden_size

    def expert_bytes(self, precision: Precision) -> int:
        return expert_bytes(self.hidden_size, self.intermediate_size, precision)

    def identity(self) -> ModelIdentity:
        """A ModelIdentity marked analytic (no checkpoint behind it); dense bytes as the executor would
        hold them by default (moeqos.core.precision.dense_bytes: bf16, routers fp32)."""
        return ModelIdentity(
            self.name,
            f"analytic:{self.name}",
            self.num_layers,
            self.num_experts + self.shared_experts,
            self.top_k + self.shared_experts,
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            dense_bytes(self.dense_params, self.router_params, Precision.BF16),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelDescription:
        return cls(**data)


@dataclass(frozen=True)
class TierSpec:
    """One memory tier: its capacity and the bandwidth reads from it see."""

    name: str
    capacity_bytes: int
    bandwidth_bps: float
    """Memory bandwidth for compute there (device, host RAM) or read bandwidth (disk)."""

    def __post_init__(self) -> None:
        validate_tier(self.name)


@dataclass(frozen=True)
class HardwareDescription:
    """A machine for analytic profiles: tiers, compute rates, the host link and overheads."""

    name: str
    device: str
    """Where dense layers run and device-tier experts are computed (`cuda:0` or `cpu`)."""
    tiers: tuple[TierSpec, ...]
    device_flops: float
    """Sustained FLOP/s of a batch-1 expert call on the device."""
    host_flops: float
    """Sustained FLOP/s of a batch-1 expert call on the host CPU."""
    link_bandwidth_bps: float = 0.0
    """Host-to-device copy bandwidth (PCIe); 0 when the device is the CPU."""
    host_compute: bool = True
    """Host-RAM experts are computed on the CPU (True, as in the paper) or copied to the device (False)."""
    call_overhead_s: float = 30e-6
    """Fixed time of one expert call on the device (kernel launches, gather/scatter, Python)."""
    host_call_overhead_s: float = 50e-6
    layer_overhead_s: float = 0.3e-3
    """Per decoder layer and token, outside the experts (attention kernels, norms, router, Python)."""
    reserve_bytes: int = 4 * 2**30
    """Device memory kept for the KV cache and activations (not available to experts)."""
    disk_latency_s: float = 1e-4
    disk_pool_slots: int = 8
    notes: str = ""

    def tier(self, name: str) -> TierSpec:
        for spec in self.tiers:
            if spec.name == name:
                return spec
        raise KeyError(f"hardware {self.name} has no tier {name!r}")

    def with_capacities(self, capacities: dict[str, int]) -> HardwareDescription:
        """A copy with the named tiers' capacities replaced."""
        tiers = tuple(
            TierSpec(t.name, capacities.get(t.name, t.capacity_bytes), t.bandwidth_bps) for t in self.tiers
        )
        unknown = set(capacities) - {t.name for t in self.tiers}
        if unknown:
            raise KeyError(f"hardware {self.name} has no tier(s) {sorted(unknown)}")
        return HardwareDescription(**{**asdict(self), "tiers": tiers})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareDescription:
        tiers = tuple(TierSpec(**t) for t in data["tiers"])
        return cls(**{**data, "tiers": tiers})

    @classmethod
    def load(cls, path: str | Path) -> HardwareDescription:
        """Read a hardware description from a JSON file (the fields of this class; tiers as a list)."""
        return cls.from_dict(json.loads(Path(path).read_text()))
