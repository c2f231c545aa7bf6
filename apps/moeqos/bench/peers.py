"""Section `peers`: moeqos against llama.cpp on the same weights at matched precision, in one run.

llama.cpp's tools are built from the `llama-cpp-python` source distribution and cached
(moeqos.bench.peer_build); the checkpoint is converted to GGUF bf16 and its routed experts quantized
to Q8_0 and Q4_0 (moeqos.bench.peer_llama). For each precision the two systems are timed back to
back with the same threads (`--peer-threads`, default 2), after the same prompt length, for the same generated
tokens, the median of the same number of runs: llama-bench (`-d P -n N -r R`) and moeqos's decode
loop with every expert in that precision (moeqos.executor.generation.time_decode, as the other
sections). Each side's bytes per token (dense weights + top_k routed experts per layer in its own
format) over the copy bandwidth gives its bound, as in the `bandwidth` section.

Matched: the weights, the dense part (bf16 in both), one stream, threads, token counts. Not matched:
the quantized formats: moeqos int8 is symmetric per output row (one bf16 scale per row, ~8.0 bits per
weight) where Q8_0 has an fp16 scale per block of 32 (8.5 bits); moeqos int4 is asymmetric per group
of 64 (bf16 scale and zero, 4.5 bits) where Q4_0 is symmetric per block of 32 (fp16 scale, 4.5 bits).
The bound fractions account for the bytes; the kernels differ. Not part of the default run (it builds
llama.cpp: minutes): `moeqos bench --only peers`.
"""

from __future__ import annotations

from typing import Any

from moeqos.bench.bandwidth import measure_copy_bandwidth
from moeqos.bench.metrics import bandwidth_bound, ratio
from moeqos.bench.peer_build import PeerSkipped, ensure_peer, peers_home
from moeqos.bench.peer_llama import GGUF_BYTES_PER_WEIGHT, GGUF_TYPES, ensure_ggufs, run_bench
from moeqos.bench.report import SectionResult, table
from moeqos.core.precision import Precision

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)


def run(ctx: Any) -> SectionResult:
    """Build or find llama.cpp, time both systems per precision; a table, or a note saying why not."""
    home = peers_home()
    try:
        peer = ensure_peer(home, log=ctx.log)
    except PeerSkipped as exc:
        return skipped(str(exc))
    threads = ctx.settings.peer_threads
    files = ensure_ggufs(peer, home, ctx.model_dir, PRECISIONS, threads, log=ctx.log)
    bandwidth, _ = measure_copy_bandwidth(ctx.settings.bandwidth_bytes, ctx.settings.repeats)
    s, prompt = ctx.settings, len(ctx.prompt_ids)
    rows, data = [], []
    for precision in PRECISIONS:
        ctx.log(f"llama-bench {GGUF_TYPES[precision]} and moeqos all-{precision.value}")
        llama = run_bench(peer, files[precision], threads, prompt, s.decode_tokens, s.repeats)
        ours = moeqos_rate(ctx, precision)
        llama_bytes = per_token_bytes(ctx, gguf_expert_bytes(ctx, precision))
        our_bytes = per_token_bytes(ctx, ctx.runtime.model.expert_bytes(precision))
        llama_fraction = llama.tokens_per_s / bandwidth_bound(llama_bytes, bandwidth)
        our_fraction = ours / bandwidth_bound(our_bytes, bandwidth)
        label = f"{precision.value} / {GGUF_TYPES[precision]}"
        rows.append(
            [label, llama.tokens_per_s, ours, ratio(ours, llama.tokens_per_s), llama_fraction, our_fraction]
        )
        data.append(
            {
                "moeqos_precision": precision.value,
                "llama_cpp_type": GGUF_TYPES[precision],
                "llama_cpp_tokens_per_s": llama.tokens_per_s,
                "llama_cpp_samples": list(llama.samples_ts),
                "llama_cpp_model_type": llama.model_type,
                "llama_cpp_model_bytes": llama.model_size,
                "moeqos_tokens_per_s": ours,
                "ratio": ratio(ours, llama.tokens_per_s),
                "llama_cpp_bytes_per_token": llama_bytes,
                "moeqos_bytes_per_token": our_bytes,
                "llama_cpp_fraction_of_bound": llama_fraction,
                "moeqos_fraction_of_bound": our_fraction,
            }
        )
    notes = [
        f"{threads} threads each; {s.decode_tokens} tokens generated after a {prompt}-token prompt; "
        f"median of {s.repeats} runs after a warm-up; llama.cpp {peer.root.name} (llama-bench -d {prompt} "
        f"-n {s.decode_tokens}), moeqos every expert in the precision, dense bf16",
        f"fraction = tok/s over each side's bound: copy bandwidth {bandwidth / 1e9:.2f} GB/s over its bytes "
        "per token (dense + top_k experts per layer in its own format)",
        "formats differ: int8 per-row scale vs Q8_0 per-32 fp16 scale; int4 asymmetric group 64 vs Q4_0 "
        "symmetric block 32 (same bytes)",
    ]
    columns = [
        "experts",
        "llama.cpp tok/s",
        "moeqos tok/s",
        "moeqos / llama.cpp",
        "llama.cpp frac",
        "moeqos frac",
    ]
    result = SectionResult("peers", data={"copy_bandwidth_bytes_per_s": bandwidth, "precisions": data})
    result.tables.append(table("peers: decode tok/s vs llama.cpp, matched precision", columns, rows, notes))
    return result


def skipped(reason: str) -> SectionResult:
    """The section's answer when llama.cpp cannot be built or fetched here: the reason, no numbers."""
    result = SectionResult("peers", data={"skipped": reason})
    result.tables.append(table("peers: skipped", ["reason"], [[reason]]))
    return result


def moeqos_rate(ctx: Any, precision: Precision) -> float:
    """Median decode tokens/s of moeqos with every expert in `precision`, on `peer_threads` threads
    (timed afresh: other sections' cached speeds ran on torch's default threads)."""
    import torch
    from moeqos.executor.generation import time_decode

    ctx.apply(ctx.uniform(precision))
    before = torch.get_num_threads()
    torch.set_num_threads(ctx.settings.peer_threads)
    try:
        s = ctx.settings
        return time_decode(ctx.runtime.decode_step, ctx.prompt_ids, s.decode_tokens, s.repeats).tokens_per_s
    finally:
        torch.set_num_threads(before)


def gguf_expert_bytes(ctx: Any, precision: Precision) -> float:
    """Bytes of one expert's three matrices in `precision`'s llama.cpp format."""
    model = ctx.runtime.model
    return 3 * model.hidden_size * model.intermediate_size * GGUF_BYTES_PER_WEIGHT[precision]


def per_token_bytes(ctx: Any, expert: float) -> float:
    """Bytes one decode token reads when every expert is `expert` bytes: the dense weights and top_k
    experts per layer (routing frequencies do not matter when all experts cost the same)."""
    model = ctx.runtime.model
    return model.dense_bytes + model.num_layers * model.top_k * expert
