"""Built-in model and hardware descriptions for what-if planning (`mixtral-8x7b`, `a100-80gb`, ...).

Hardware numbers are vendor peak figures derated to what a batch-1 decode sees, not measurements:
- a100-80gb: HBM2e 2.0 TB/s (NVIDIA spec 2.04 TB/s), PCIe 4.0 x16 ~25 GB/s effective, a server host
  with 256 GB RAM whose CPU streams expert weights at ~60 GB/s (≈ half a dual-socket DDR4 peak) and
  sustains ~1 TFLOP/s, NVMe at 3 GB/s. Overheads model an eager PyTorch/HF runtime: 30 µs per expert
  call on the GPU, 100 µs on the CPU, 0.3 ms per decoder layer outside the experts.
- h100-80gb: HBM3 3.35 TB/s, PCIe 5.0 x16 ~50 GB/s effective, same host as above but DDR5 (~80 GB/s).
- cpu-2core: this machine, not measured: 24 GB RAM at ~10 GB/s, ~50 GFLOP/s, a 1 GB/s disk.
Reference perplexities are published full-precision numbers where known; see each `reference_source`.

Model shapes are the published `config.json` values of each Hugging Face checkpoint (fields in
parentheses), routed experts apart from shared ones (a shared expert is `shared_experts` slices of one
routed expert's size, as the executor plans it):
- mixtral-8x22b: mistralai/Mixtral-8x22B-v0.1 (num_hidden_layers 56, num_local_experts 8,
  hidden_size 6144, intermediate_size 16384, num_experts_per_tok 2, vocab_size 32000,
  num_attention_heads 48, num_key_value_heads 8).
- olmoe-1b-7b: allenai/OLMoE-1B-7B-0924 (16 layers, num_experts 64, hidden 2048, intermediate 1024,
  top-8, vocab 50304, 16 heads, 16 kv heads, untied; OLMoE paper arXiv 2409.02060 Table 1).
- qwen1.5-moe-a2.7b: Qwen/Qwen1.5-MoE-A2.7B (24 layers, num_experts 60, hidden 2048,
  moe_intermediate_size 1408, shared_expert_intermediate_size 5632 = 4 slices, top-4, vocab 151936,
  16 heads, 16 kv heads, untied).
- qwen3-30b-a3b: Qwen/Qwen3-30B-A3B (48 layers, num_experts 128, hidden 2048, moe_intermediate_size
  768, top-8, vocab 151936, 32 heads, 4 kv heads, head_dim 128, untied).
- granite-3.0-1b-a400m: ibm-granite/granite-3.0-1b-a400m-base (24 layers, num_local_experts 32,
  hidden 1024, intermediate 512, top-8, vocab 49155, 16 heads, 8 kv heads, tied embeddings).
"""

from __future__ import annotations

from moeqos.core.descriptions import HardwareDescription, ModelDescription, TierSpec

GB = 10**9
GIB = 2**30

MODELS: dict[str, ModelDescription] = {
    "mixtral-8x7b": ModelDescription(
        "mixtral-8x7b",
        32,
        8,
        4096,
        14336,
        2,
        32000,
        32,
        8,
        reference_perplexity=3.84,
        reference_source="Mixtral-8x7B fp16 WikiText-2 (2048 ctx) as commonly reported in quantization "
        "papers (values 3.4-3.9 depending on context length)",
    ),
    "mixtral-8x22b": ModelDescription(
        "mixtral-8x22b",
        56,
        8,
        6144,
        16384,
        2,
        32000,
        48,
        8,
        reference_perplexity=3.0,
        reference_source="assumed 3.0 (no published WikiText-2 number at hand; placeholder)",
    ),
    "olmoe-1b-7b": ModelDescription(
        "olmoe-1b-7b",
        16,
        64,
        2048,
        1024,
        8,
        50304,
        16,
        16,
        reference_perplexity=10.0,
        reference_source="assumed 10.0 (placeholder; measure the real one with `moeqos eval`)",
    ),
    "qwen1.5-moe-a2.7b": ModelDescription(
        "qwen1.5-moe-a2.7b",
        24,
        60,
        2048,
        1408,
        4,
        151936,
        16,
        16,
        shared_experts=4,
        reference_perplexity=9.0,
        reference_source="assumed 9.0 (placeholder; measure the real one with `moeqos eval`)",
    ),
    "qwen3-30b-a3b": ModelDescription(
        "qwen3-30b-a3b",
        48,
        128,
        2048,
        768,
        8,
        151936,
        32,
        4,
        head_dim=128,
        reference_perplexity=8.0,
        reference_source="assumed 8.0 (placeholder; measure the real one with `moeqos eval`)",
    ),
    "granite-3.0-1b-a400m": ModelDescription(
        "granite-3.0-1b-a400m",
        24,
        32,
        1024,
        512,
        8,
        49155,
        16,
        8,
        tied_embeddings=True,
        reference_perplexity=15.0,
        reference_source="assumed 15.0 (placeholder; measure the real one with `moeqos eval`)",
    ),
    "smollm2-135m-moe8": ModelDescription(
        "smollm2-135m-moe8",
        30,
        8,
        576,
        1536,
        2,
        49152,
        9,
        3,
        tied_embeddings=True,
        reference_perplexity=20.0,
        reference_source="assumed 20.0 (placeholder; measure the real one with `moeqos eval`)",
    ),
}

_HOST = TierSpec("cpu", 256 * GB, 60e9)
_DISK = TierSpec("disk", 2000 * GB, 3e9)

HARDWARE: dict[str, HardwareDescription] = {
    "a100-80gb": HardwareDescription(
        "a100-80gb",
        "cuda:0",
        (TierSpec("cuda:0", 80 * GB, 2.0e12), _HOST, _DISK),
        device_flops=150e12,
        host_flops=1e12,
        link_bandwidth_bps=25e9,
        call_overhead_s=30e-6,
        host_call_overhead_s=100e-6,
        layer_overhead_s=0.3e-3,
        notes="A100 80GB SXM, PCIe 4 x16 host link, host CPU computes host-RAM experts",
    ),
    "h100-80gb": HardwareDescription(
        "h100-80gb",
        "cuda:0",
        (TierSpec("cuda:0", 80 * GB, 3.35e12), TierSpec("cpu", 256 * GB, 80e9), _DISK),
        device_flops=400e12,
        host_flops=1.5e12,
        link_bandwidth_bps=50e9,
        call_overhead_s=25e-6,
        host_call_overhead_s=100e-6,
        layer_overhead_s=0.25e-3,
        notes="H100 80GB SXM, PCIe 5 x16 host link, host CPU computes host-RAM experts",
    ),
    "cpu-2core": HardwareDescription(
        "cpu-2core",
        "cpu",
        (TierSpec("cpu", 16 * GIB, 10e9), TierSpec("disk", 100 * GB, 1e9)),
        device_flops=50e9,
        host_flops=50e9,
        call_overhead_s=30e-6,
        host_call_overhead_s=30e-6,
        layer_overhead_s=0.2e-3,
        reserve_bytes=2 * GIB,
        disk_latency_s=2e-4,
        disk_pool_slots=16,
        notes="this 2-core CPU box, not measured: ~10 GB/s streaming",
    ),
}
