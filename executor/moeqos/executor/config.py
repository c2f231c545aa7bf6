"""The executor runtime's configuration: one typed, validated object, read from flags in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moeqos.core.precision import Precision
from moeqos.core.tier import DISK, validate_tier

GIB = 1 << 30

HOST_POLICIES = ("compute", "copy")
DISK_READS = ("cached", "uncached")
DENSE_PRECISIONS = (Precision.FP32, Precision.BF16, Precision.FP16)
DEFAULT_DENSE_PRECISION = Precision.BF16


@dataclass(frozen=True)
class BatchLimits:
    """How much the batch scheduler (moeqos.executor.batch_scheduler) computes at once."""

    max_batch: int = 16
    """Generations prefilling or decoding at once; more wait for a place."""
    max_tokens: int = 65536
    """KV tokens reserved at once, each generation reserving its prompt plus its max_tokens: one waits
    until its reservation fits, and one that cannot fit even alone is refused (RESOURCE_EXHAUSTED)."""
    prefill_chunk: int = 256
    """Prompt tokens read per step (padding included): the prompts of streams joining together that
    fit it are read in one pass, and a longer prompt one chunk a step, so it delays the streams
    decoding by one chunk a step."""

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_tokens < 1 or self.prefill_chunk < 1:
            raise ValueError(f"batch limits must be positive, got {self}")


@dataclass(frozen=True)
class ExecutorConfig:
    """How one executor loads and serves one model."""

    model_dir: Path
    """A Hugging Face-format checkpoint directory (config.json + safetensors, optionally a tokenizer)."""
    device: str = "cpu"
    """The execution device (`cpu`, `cuda:0`); attention, embeddings, head and routers live here."""
    dense_precision: Precision = DEFAULT_DENSE_PRECISION
    """Precision of every non-expert weight (attention, norms, embeddings, head): fp32, bf16 or fp16.
    The routers stay fp32 whatever this says."""
    tier_budgets: dict[str, int] = field(default_factory=dict)
    """Bytes of expert weights each tier may hold, e.g. `{"cpu": 8 << 30, "disk": 64 << 30}`. A tier
    left out gets its physical size (device memory, host RAM, free disk in the variant cache)."""
    disk_pool_slots: int = 8
    """Experts of the `disk` tier that may be resident at once (the LRU slot pool on the device)."""
    disk_reads: str = "cached"
    """How the `disk` tier reads an expert file: `cached` leaves its pages in the OS page cache (a
    later miss may be served from RAM the budget did not count), `uncached` drops them after each read
    so every miss goes to the device, as on a host whose RAM really cannot hold the experts."""
    host_policy: str = "compute"
    """For experts in host RAM when the device is an accelerator: `compute` them on the host, or
    `copy` their weights to the device on each use."""
    variant_cache_dir: Path | None = None
    """Where quantized variants are kept on disk (the `disk` tier reads them from here); None means a
    private temporary directory that lives as long as the process."""
    memory_cache_bytes: int = GIB
    """Bytes of quantized variants not used by the current plan kept in host RAM, so that switching
    back and forth between plans does not quantize again (LRU)."""
    threads: int | None = None
    """torch intra-op threads; None leaves torch's default."""
    batch: BatchLimits = field(default_factory=BatchLimits)
    """Generations and KV tokens decoded together."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.variant_cache_dir is not None:
            object.__setattr__(self, "variant_cache_dir", Path(self.variant_cache_dir))
        object.__setattr__(self, "dense_precision", Precision.parse(str(self.dense_precision)))
        check_settings(
            self.device,
            self.dense_precision,
            self.tier_budgets,
            self.disk_pool_slots,
            self.disk_reads,
            self.threads,
        )
        if self.host_policy not in HOST_POLICIES:
            raise ValueError(f"host_policy must be one of {HOST_POLICIES}, got {self.host_policy!r}")
        if self.memory_cache_bytes < 0:
            raise ValueError(f"memory_cache_bytes must be >= 0, got {self.memory_cache_bytes}")

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tiers this executor offers: the device, host RAM when the device is not the host, disk."""
        if self.device == "cpu":
            return ("cpu", DISK)
        return (self.device, "cpu", DISK)


def check_settings(
    device: str,
    dense_precision: Precision | str,
    tier_budgets: Mapping[str, int],
    disk_pool_slots: int,
    disk_reads: str,
    threads: int | None,
) -> None:
    """ValueError unless these are valid ExecutorConfig fields of the same names (also used by
    configurations that hold them before an ExecutorConfig can be made, e.g. the server's)."""
    if Precision.parse(str(dense_precision)) not in DENSE_PRECISIONS:
        raise ValueError(f"dense_precision must be fp32, bf16 or fp16, got {dense_precision}")
    if validate_tier(device) == DISK:
        raise ValueError("device must be a compute device (cpu, cuda:N), not disk")
    for name, budget in tier_budgets.items():
        validate_tier(name)
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"tier {name}: budget must be a non-negative integer, got {budget!r}")
    if disk_pool_slots < 1:
        raise ValueError(f"disk_pool_slots must be >= 1, got {disk_pool_slots}")
    if disk_reads not in DISK_READS:
        raise ValueError(f"disk_reads must be one of {DISK_READS}, got {disk_reads!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
