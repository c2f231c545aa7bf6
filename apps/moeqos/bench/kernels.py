"""Decode-matmul speed of each precision's kernel against fp32 F.linear.

    /work/venv/bin/python -m moeqos.bench.kernels [--quick] [--threads N] [--repeats N]

One token (M = 1) through a 14336x4096 weight (Mixtral-8x7B's w1) and through the default model's
expert matrices (hidden 576, intermediate 1536), and one whole SwiGLU expert (w1/w3 fused vs three
separate matmuls), the two compute paths of bit-packed int3/int2 (issue 18), and bf16 through torch's
`mm` on the plain weight against oneDNN's prepacked layout, and torch's int4 / int8 / bf16 ops against
moeqos's native kernels (issue 13; `--native` prints only that table). Every time is the
median of repeated runs; ratio = fp32 time / this time, so > 1 is faster than fp32. `--quick` skips the 14336x4096 weight and runs fewer repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from moeqos.bench.report import Machine, Table
from moeqos.bench.timing import time_repeats
from moeqos.core.precision import Precision
from moeqos.executor.quant import QuantExpert, QuantLinear, cpu_kernels, native, quantize_linear
from moeqos.executor.quant.onednn_kernels import PackedBf16CpuKernel, packed_bf16_fits
from moeqos.executor.quant.packed_kernels import UnpackDequantKernel, UnpackInt4Kernel
from moeqos.executor.quant.rtn import quantize

BIG = (14336, 4096)
HIDDEN, INTERMEDIATE = 576, 1536


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    return time_repeats(fn, repeats, warmup=2).median * 1e3


def matrix_table(rows: int, cols: int, repeats: int) -> Table:
    """One decode matmul through a [rows, cols] weight, per precision, fp32 and bf16 activations."""
    weight = torch.randn(rows, cols) / cols**0.5  # [N, K]
    x = torch.randn(1, cols)  # [1, K]
    xb = x.bfloat16()
    base = median_ms(lambda: F.linear(x, weight), repeats)
    table_rows = [("fp32 F.linear", "-", f"{base:.3f}", "1.00", "", "")]
    for precision in Precision:
        linear = quantize_linear(weight, precision)
        ms = median_ms(partial(linear, x), repeats)
        ms_b = median_ms(partial(linear, xb), repeats)
        kernel = type(linear.kernel).__name__
        table_rows.append(
            (str(precision), kernel, f"{ms:.3f}", f"{base / ms:.2f}", f"{ms_b:.3f}", f"{base / ms_b:.2f}")
        )
    return Table(
        f"decode matmul, weight {rows}x{cols}, 1 token",
        ("precision", "kernel", "ms (fp32 x)", "ratio", "ms (bf16 x)", "ratio"),
        tuple(table_rows),
    )


def packed_paths_table(rows: int, cols: int, repeats: int) -> Table:
    """int3/int2 bit-packed, one token through a [rows, cols] weight by each compute path: unpack into
    the int4 op's layout per call (what QuantLinear runs where the op fits) vs unpack + dequantize +
    F.linear, against int4's own kernel. The paths run in turn within each repeat, so machine load
    moves them together and the ratios hold where the absolute times do not."""
    weight = torch.randn(rows, cols) / cols**0.5  # [N, K]
    x = torch.randn(1, cols).bfloat16()  # [1, K]
    paths: dict[str, Callable[[], object]] = {}
    for precision in (Precision.INT4, Precision.INT3, Precision.INT2):
        q = quantize(weight, precision)
        if precision.is_bit_packed:
            paths[f"{precision} unpack -> int4 op"] = partial(
                UnpackInt4Kernel(q, cpu_kernels.INT4_OP).matmul, x
            )
            paths[f"{precision} unpack + dequantize"] = partial(UnpackDequantKernel(q).matmul, x)
        else:
            paths[f"{precision} int4 op"] = partial(cpu_kernels.Int4CpuKernel(q).matmul, x)
    times = interleaved_median_ms(paths, repeats)
    base = next(iter(times.values()))
    table_rows = tuple((name, f"{ms:.3f}", f"{ms / base:.2f}") for name, ms in times.items())
    return Table(
        f"bit-packed compute paths, weight {rows}x{cols}, 1 token (bf16 activations)",
        ("path", "ms", "x int4"),
        table_rows,
    )


BF16_SHAPES = ((HIDDEN, HIDDEN), (192, HIDDEN), (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))
"""The default model's bf16 matrices of a decode step: q/o, k/v, an expert's fused w1/w3, its w2."""

DISTINCT_WEIGHTS = 32
"""Weights of one shape a path cycles through, so they come from memory as a decode step's do (one
weight called again and again stays in cache and times the cache, not the step)."""


def bf16_paths_table(repeats: int) -> Table:
    """bf16 matmuls of a few rows by torch's `mm` on the plain [N, K] weight vs oneDNN's prepacked
    layout (what `QuantLinear` runs for bf16 where `packed_bf16_fits`), per shape and row count, each
    path over DISTINCT_WEIGHTS weights, interleaved; µs per call, and whether the results are equal."""
    table_rows = []
    for rows, cols in BF16_SHAPES:
        weights = [
            (torch.randn(rows, cols) / cols**0.5).bfloat16() for _ in range(DISTINCT_WEIGHTS)
        ]  # [N, K]
        kernels = [PackedBf16CpuKernel(quantize(w, Precision.BF16)) for w in weights]
        for tokens in (1, 16):
            x = torch.randn(tokens, cols).bfloat16()  # [M, K]
            paths = {
                "mm": partial(_each, [partial(torch.mm, x, w.t()) for w in weights]),
                "packed": partial(_each, [partial(k.matmul, x) for k in kernels]),
            }
            times = interleaved_median_ms(paths, repeats)
            same = all(
                torch.equal(torch.mm(x, w.t()), k.matmul(x)) for w, k in zip(weights, kernels, strict=True)
            )
            mm_us, packed_us = (times[name] * 1e3 / DISTINCT_WEIGHTS for name in ("mm", "packed"))
            table_rows.append(
                (
                    f"{rows}x{cols}",
                    str(tokens),
                    f"{mm_us:.1f}",
                    f"{packed_us:.1f}",
                    f"{mm_us / packed_us:.2f}",
                    str(same),
                )
            )
    return Table(
        f"bf16 matmul: torch mm vs oneDNN prepacked, {DISTINCT_WEIGHTS} weights per shape",
        ("weight", "rows", "µs mm", "µs packed", "x", "equal"),
        tuple(table_rows),
    )


NATIVE_SHAPES = ((2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE), (HIDDEN, HIDDEN))
"""An expert's fused w1/w3 and its w2, and the q/o projection."""


def native_table(repeats: int) -> Table:
    """torch's op vs the native kernel (moeqos.executor.quant.native) per precision, shape and row count,
    each path over DISTINCT_WEIGHTS weights (so they come from memory), interleaved; µs per call."""
    table_rows = []
    for rows, cols in NATIVE_SHAPES:
        for name in ("int4", "int8", "bf16"):
            pairs = [
                native.routes(name, torch.randn(rows, cols) / cols**0.5) for _ in range(DISTINCT_WEIGHTS)
            ]
            for tokens in (1, 16):
                x = torch.randn(tokens, cols).bfloat16()  # [M, K]
                paths = {
                    "torch": partial(_each, [partial(torch_route, x) for torch_route, _ in pairs]),
                    "native": partial(_each, [partial(native_route, x) for _, native_route in pairs]),
                }
                times = interleaved_median_ms(paths, repeats)
                torch_us, native_us = (times[p] * 1e3 / DISTINCT_WEIGHTS for p in ("torch", "native"))
                table_rows.append(
                    (name, f"{rows}x{cols}", str(tokens), f"{torch_us:.1f}", f"{native_us:.1f}",
                     f"{torch_us / native_us:.2f}")
                )  # fmt: skip
    return Table(
        f"torch's ops vs the native kernels, {DISTINCT_WEIGHTS} weights per shape (bf16 activations)",
        ("precision", "weight", "rows", "µs torch", "µs native", "x"),
        tuple(table_rows),
    )


def _each(calls: list[Callable[[], object]]) -> None:
    for call in calls:
        call()


def interleaved_median_ms(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms of each callable, the callables run in turn within every repeat (after 2 warm-ups)."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(repeats + 2):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            if round_ >= 2:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}


def unfused_expert(w1: QuantLinear, w2: QuantLinear, w3: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The expert as three separate kernel calls, to compare against the fused w1/w3 layout."""
    return w2(F.silu(w1(x)) * w3(x))  # [T, H]


def expert_table(repeats: int) -> Table:
    """One token through a whole expert: fused w1/w3 (two kernel calls) vs three separate calls."""
    w1, w3 = (torch.randn(INTERMEDIATE, HIDDEN) / HIDDEN**0.5 for _ in range(2))  # [I, H]
    w2 = torch.randn(HIDDEN, INTERMEDIATE) / INTERMEDIATE**0.5  # [H, I]
    x = torch.randn(1, HIDDEN)  # [1, H]

    def fp32_expert() -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)  # [1, H]

    base = median_ms(fp32_expert, repeats)
    table_rows = [("fp32 F.linear x3", f"{base:.3f}", "1.00", "", "")]
    for precision in Precision:
        fused = QuantExpert.from_weights(w1, w2, w3, precision)
        q1, q2, q3 = (quantize_linear(w, precision) for w in (w1, w2, w3))

        ms = median_ms(partial(fused, x), repeats)
        ms_split = median_ms(partial(unfused_expert, q1, q2, q3, x), repeats)
        table_rows.append(
            (str(precision), f"{ms:.3f}", f"{base / ms:.2f}", f"{ms_split:.3f}", f"{base / ms_split:.2f}")
        )
    return Table(
        f"expert forward, hidden {HIDDEN}, intermediate {INTERMEDIATE}, 1 token (fp32 activations)",
        ("precision", "ms fused w1/w3", "ratio", "ms 3 calls", "ratio"),
        tuple(table_rows),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="skip the 14336x4096 weight, fewer repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per median (default 25, quick 7)")
    parser.add_argument("--native", action="store_true", help="only torch's ops vs the native kernels")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (7 if args.quick else 25)
    torch.manual_seed(0)
    header = f"{Machine.detect(torch.get_num_threads()).describe()}; torch {torch.__version__}; median of {repeats}"
    if args.native:
        if native.library() is None:
            print("native kernels: not built here (no C compiler, or MOEQOS_NATIVE_KERNELS=0)")
            return
        print(native_table(repeats).render(header))
        return
    shapes = [(INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)] + ([] if args.quick else [BIG])
    for rows, cols in shapes:
        print(matrix_table(rows, cols, repeats).render(header), end="\n\n")
    print(packed_paths_table(HIDDEN, INTERMEDIATE, repeats * 4).render(header), end="\n\n")
    print(expert_table(repeats).render(header))
    if packed_bf16_fits(Precision.BF16, torch.device("cpu")):
        print("\n" + bf16_paths_table(repeats).render(header))
    else:
        print("\nbf16 prepacked: not measured (this CPU has no native oneDNN bf16; bf16 runs on mm)")


if __name__ == "__main__":
    main()
