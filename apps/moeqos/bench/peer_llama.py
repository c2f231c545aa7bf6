"""The model in llama.cpp's format and llama-bench's numbers, for the `peers` section.

The checkpoint is converted once to GGUF bf16 (llama.cpp's `convert_hf_to_gguf.py`, importing the
`gguf` package vendored beside it), then quantized with `llama-quantize` so that only the routed
experts change precision, as moeqos keeps its dense weights bf16 whatever the experts' precision:
the file type is Q8_0 or Q4_0 with `--pure` (no per-tensor mixture), and the dense weights are sent
back to bf16 (`--tensor-type attn_=bf16`, the token embeddings and output likewise; llama-quantize
applies `--tensor-type` only on top of a quantized file type). Norms and routers stay f32 either way.
Files are cached under `$MOEQOS_HOME/peers/gguf/` by a key of the checkpoint's contents.

llama-bench times `-n N` generated tokens after `-d P` tokens of context (the prompt moeqos decodes
after), `-r R` times, and prints each run's tokens/s (`samples_ts`) with `-o json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from moeqos.bench.peer_build import Peer
from moeqos.core.precision import Precision

DENSE_BF16 = ("--token-embedding-type", "bf16", "--output-tensor-type", "bf16", "--tensor-type", "attn_=bf16")
"""llama-quantize options keeping the dense weights bf16: the embeddings, the head and every attention
matrix (`attn_` matches attn_q, attn_k, attn_v and attn_output)."""

GGUF_TYPES = {Precision.BF16: "BF16", Precision.INT8: "Q8_0", Precision.INT4: "Q4_0"}
"""The llama.cpp format each moeqos expert precision is compared with."""

GGUF_BYTES_PER_WEIGHT = {Precision.BF16: 2.0, Precision.INT8: 34 / 32, Precision.INT4: 18 / 32}
"""Bytes per weight of those formats: Q8_0 is 32 int8 codes + an fp16 scale per block of 32, Q4_0 32
4-bit codes + an fp16 scale."""


@dataclass(frozen=True)
class LlamaSpeed:
    """One llama-bench test: generated tokens per second of each run."""

    model_type: str
    """llama-bench's description of the file (architecture, size, file type)."""
    model_size: int
    """Bytes of the model's weights as llama-bench loaded them (shows the experts' format took)."""
    n_prompt: int
    n_gen: int
    n_depth: int
    threads: int
    samples_ts: tuple[float, ...]

    @property
    def tokens_per_s(self) -> float:
        """The median run."""
        return statistics.median(self.samples_ts)


def model_key(model_dir: Path) -> str:
    """A name for the checkpoint's converted files: its directory name and a digest of its config and
    the names and sizes of its weight files (a rebuilt checkpoint of other weights gets new files)."""
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return f"{model_dir.name}-{digest.hexdigest()[:12]}"


def gguf_path(home: Path, model_dir: Path, precision: Precision) -> Path:
    return home / "gguf" / f"{model_key(model_dir)}.{GGUF_TYPES[precision].lower()}.gguf"


def convert_command(peer: Peer, model_dir: Path, out: Path) -> list[str]:
    """The checkpoint to GGUF bf16, with the converter run by this Python (it needs torch and numpy)."""
    return [sys.executable, str(peer.converter), str(model_dir), "--outtype", "bf16", "--outfile", str(out)]


def converter_env(peer: Peer) -> dict[str, str]:
    """The environment the converter runs in: the vendored gguf package first on the import path."""
    path = os.pathsep.join(p for p in (str(peer.gguf_py), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "NO_LOCAL_GGUF": ""}


def quantize_command(peer: Peer, source: Path, out: Path, precision: Precision, threads: int) -> list[str]:
    """bf16 GGUF -> the same with only the routed experts in `precision`'s llama.cpp format."""
    return [
        str(peer.quantize),
        "--pure",
        *DENSE_BF16,
        str(source),
        str(out),
        GGUF_TYPES[precision],
        str(threads),
    ]


def bench_command(peer: Peer, model: Path, threads: int, prompt: int, tokens: int, repeats: int) -> list[str]:
    """llama-bench timing `tokens` generated after `prompt` tokens of context, `repeats` times, JSON out."""
    return [
        str(peer.bench), "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(tokens),
        "-d", str(prompt), "-r", str(repeats), "-o", "json",
    ]  # fmt: skip


def parse_bench_json(text: str) -> list[LlamaSpeed]:
    """llama-bench's `-o json` output: one LlamaSpeed per test. ValueError when it is not that."""
    try:
        tests = json.loads(text)
        return [
            LlamaSpeed(
                model_type=str(t["model_type"]),
                model_size=int(t["model_size"]),
                n_prompt=int(t["n_prompt"]),
                n_gen=int(t["n_gen"]),
                n_depth=int(t.get("n_depth", 0)),
                threads=int(t["n_threads"]),
                samples_ts=tuple(float(x) for x in t["samples_ts"]),
            )
            for t in tests
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not llama-bench JSON output: {exc}") from exc


def ensure_ggufs(
    peer: Peer,
    home: Path,
    model_dir: Path,
    precisions: Sequence[Precision],
    threads: int,
    log: Callable[[str], None] = print,
) -> dict[Precision, Path]:
    """The model's GGUF file for each precision, converted and quantized first where not cached. Each
    file is written under a temporary name and renamed, so a cached file is always whole."""
    bf16 = gguf_path(home, model_dir, Precision.BF16)
    files = {}
    for precision in (Precision.BF16, *(p for p in precisions if p != Precision.BF16)):
        out = gguf_path(home, model_dir, precision)
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_suffix(".partial")
            if precision == Precision.BF16:
                log(f"converting {model_dir} to GGUF bf16")
                _run(convert_command(peer, model_dir, partial), converter_env(peer), "convert_hf_to_gguf.py")
            else:
                log(f"quantizing the experts to {GGUF_TYPES[precision]}")
                _run(quantize_command(peer, bf16, partial, precision, threads), None, "llama-quantize")
            partial.rename(out)
        files[precision] = out
    return {p: files[p] for p in precisions}


def run_bench(peer: Peer, model: Path, threads: int, prompt: int, tokens: int, repeats: int) -> LlamaSpeed:
    """Time `model` with llama-bench; its one test."""
    done = _run(bench_command(peer, model, threads, prompt, tokens, repeats), None, "llama-bench")
    [speed] = parse_bench_json(done.stdout)
    return speed


def _run(command: list[str], env: dict[str, str] | None, what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done
