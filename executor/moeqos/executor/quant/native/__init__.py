"""moeqos's native CPU matmuls (moeqos_kernels.c) and the decode step built from them (moeqos_decode.c,
driven by moeqos.executor.native_decode through .decode), compiled from source at first use, with torch's
ops and the PyTorch step as the fallback.

Why they exist (issue 13): where the CPU has AVX2 but no AVX512 (a 2-core AMD EPYC VM, 2026-12-04),
torch's weight-only CPU ops are compute-bound at one decode row: `_weight_int4pack_mm_for_cpu` read a
3072x576 int4 weight at ~3.5 GB/s, `_weight_int8pack_mm` at ~6 GB/s, bf16 `mm` at ~10 GB/s, against
30-35 GB/s of copy bandwidth. The C kernels (see moeqos_kernels.c): int4 codes times activations rounded
to int8 per 32 values (llama.cpp's Q8_0: exact int32 dot products, `maddubs`), int8 codes times
activations rounded to int16 (`madd`), four output features at a time; bf16 weights widened to fp32 in
registers. Measured there from memory (32 weights per shape), one row, 2 threads, µs per call, torch
vs native: int4 3072x576 183 vs 117, int8 188 vs 155, bf16 211 vs 142
(`python -m moeqos.bench.kernels --native`; README "Native kernels").

What it costs: int4 activations rounded to 8 bits, which moved the default model's all-int4 perplexity
98.24 -> 98.59 (int4 itself: +24%); `kernel_error_bound` in moeqos.executor.quant.reference has the
bound. The int8 kernel's 16-bit activations err less than torch's bf16 ones; bf16 products are fp32
products of the bf16 operands, as torch's.

Built with the machine's C compiler (`cc -O3 -march=native -fopenmp`, ~1 s) into
$MOEQOS_HOME/native/<hash of source, flags, compiler and CPU>/, once per machine; loaded after torch, the
library uses torch's libgomp (same soname), so its threads are torch's pool. Not built, and torch's ops
serve everything, when there is no compiler, the build fails (logged once), or MOEQOS_NATIVE_KERNELS=0.
Whether a precision uses them is measured once per process (`preferred`): both routes timed on one
decode row of a 3072x576 weight, torch's op kept only where it is more than twice as fast (`TORCH_WINS`:
only native weights are readable by the C decode step, which is worth more than a faster matmul).

Shape legend: M rows of activations, K input features, N output features, G = K / group groups.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from moeqos.executor.default_model.location import moeqos_home
from torch import Tensor

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("moeqos_kernels.c", "moeqos_decode.c"))
HEADER = Path(__file__).with_name("moeqos_kernels.h")
FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=off",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=c11",
    "-D_ISOC11_SOURCE",
)
"""-ffp-contract=off: a * b + c rounds twice, as torch's ops on tensors do (the dequantization is then
the reference's bit for bit); the kernels' FMAs are written out as intrinsics."""
DISABLE_ENV = "MOEQOS_NATIVE_KERNELS"
"""Set to 0 to keep torch's ops everywhere (comparisons, or a machine where the build misbehaves)."""

INT4_BLOCK = 64
"""Weights per native int4 code block (32 bytes); K must be a multiple of it."""

DEQUANT_ROWS = 32
"""From this many rows on, an integer weight is dequantized to fp32 in C for the call and multiplied by
fp32 `mm` (3072x576, 128 rows: 3.2 ms + 0.2 ms of dequantization against 6.2-6.3 ms by either int4
op; at 16 rows the per-row kernel's 0.8 ms beats fp32 `mm`'s 1.0)."""

FEW_ROWS = 4
"""Rows up to which the native int8 kernel is used (`cpu_kernels.Int8CpuKernel`); int4, whose native
layout torch's op cannot read, takes every row count below DEQUANT_ROWS to it (16 rows from memory:
0.71-0.85x torch's op)."""

_P, _I, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "moeqos_q4_mm": [_P, _I, _I, _I, _P, _P, _P, _I, _I, _P, _I, _INT],
    "moeqos_q8_mm": [_P, _I, _I, _I, _P, _P, _I, _P, _I, _INT],
    "moeqos_bf16_mm": [_P, _I, _I, _I, _P, _I, _P, _I, _INT],
    "moeqos_q4_dequant": [_P, _P, _P, _I, _I, _I, _P, _INT],
    "moeqos_q8_dequant": [_P, _P, _I, _I, _P, _INT],
    "moeqos_decode_layers": [_P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _INT],
    "moeqos_moe_step": [_I, _P, _P, _I, _P, _P, _P, _INT],
    "moeqos_silu_mul": [_P, _P, _I, _P],
    "moeqos_unpack_nibbles": [_P, _INT, _I, _P],
}
_build_lock = threading.Lock()


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def compiler() -> str | None:
    """The C compiler the kernels are built with ($CC, else cc or gcc on the PATH), or None."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path(compiler: str) -> Path:
    """Where the library for this source, compiler and CPU is (or will be) built."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256()
    sources = [path.read_bytes() for path in (*SOURCES, HEADER)]
    for part in (*sources, " ".join(FLAGS).encode(), version.encode(), _cpu_flags().encode()):
        digest.update(part)
    return moeqos_home() / "native" / digest.hexdigest()[:16] / "libmoeqos_kernels.so"


def build(compiler: str) -> Path:
    """Compile the kernels for this machine (a no-op when already built); raises on failure."""
    target = library_path(compiler)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:  # renamed into place whole
        built = Path(scratch) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, "-o", str(built), *map(str, SOURCES), "-lm"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)
    return target


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, built first if need be; None where they are off or cannot be built."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return None
    cc = compiler()
    if cc is None:
        log.info("native kernels: no C compiler; torch's ops serve every precision")
        return None
    try:
        with _build_lock:
            lib = ctypes.CDLL(str(build(cc)))
    except (OSError, RuntimeError) as error:
        log.warning("native kernels not built (%s); torch's ops serve every precision", error)
        return None
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = _INT
    return lib


def call(name: str, *args: object) -> None:
    """One kernel call; the arguments are plain ints (pointers, sizes), so ctypes converts nothing."""
    lib = library()
    assert lib is not None, "native kernels called without a library (check `preferred` first)"
    code = getattr(lib, name)(*args)
    if code != 0:
        raise RuntimeError(f"{name} failed with code {code} (1: shape, 2: out of memory)")


def _bf16_rows(x: Tensor) -> Tensor:
    if x.dtype != torch.bfloat16:
        x = x.to(torch.bfloat16)
    return x if x.stride(-1) == 1 else x.contiguous()  # [M, K], rows may be strided


def q4_mm(x: Tensor, codes: Tensor, scales_zeros: Tensor, group: int) -> Tensor:
    """x [M, K] -> x @ W.T [M, N] bf16, W the int4 weight of `codes` uint8 [N, K/2] (`pack_q4`) and
    `scales_zeros` bf16 [2, N, G] (scales, zeros), contiguous."""
    xb = _bf16_rows(x)
    rows, cols, features = xb.shape[0], xb.shape[1], codes.shape[0]
    y = torch.empty(rows, features, dtype=torch.bfloat16)
    scales = scales_zeros.data_ptr()
    zeros = scales + features * (cols // group) * 2  # the second [N, G] half, bf16 (no slicing op)
    call(
        "moeqos_q4_mm", xb.data_ptr(), rows, cols, xb.stride(0), codes.data_ptr(), scales, zeros,
        features, group, y.data_ptr(), features, torch.get_num_threads(),
    )  # fmt: skip
    return y


def q8_mm(x: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
    """x [M, K] -> x @ W.T [M, N] bf16, W = codes int8 [N, K] times scales bf16 [N] per row."""
    xb = _bf16_rows(x)
    rows, cols, features = xb.shape[0], xb.shape[1], codes.shape[0]
    y = torch.empty(rows, features, dtype=torch.bfloat16)
    call(
        "moeqos_q8_mm", xb.data_ptr(), rows, cols, xb.stride(0), codes.data_ptr(), scales.data_ptr(),
        features, y.data_ptr(), features, torch.get_num_threads(),
    )  # fmt: skip
    return y


def bf16_mm(x: Tensor, w: Tensor) -> Tensor:
    """x [M, K] bf16 @ w [N, K].T bf16 -> [M, N] bf16, accumulated in fp32; w contiguous, rows of x
    contiguous, K a multiple of 8 (gemv_paths offers it only then)."""
    rows, cols, features = x.shape[0], x.shape[1], w.shape[0]
    y = torch.empty(rows, features, dtype=torch.bfloat16)
    call(
        "moeqos_bf16_mm", x.data_ptr(), rows, cols, x.stride(0), w.data_ptr(), features, y.data_ptr(),
        features, torch.get_num_threads(),
    )  # fmt: skip
    return y


def q4_dequantize(codes: Tensor, scales_zeros: Tensor, group: int) -> Tensor:
    """The fp32 weight [N, K] of `q4_mm`'s operands (for a product of many rows: `DEQUANT_ROWS`)."""
    features, cols = codes.shape[0], codes.shape[1] * 2
    w = torch.empty(features, cols)
    scales = scales_zeros.data_ptr()
    zeros = scales + features * (cols // group) * 2
    call("moeqos_q4_dequant", codes.data_ptr(), scales, zeros, features, cols, group, w.data_ptr(),
          torch.get_num_threads())  # fmt: skip
    return w


def q8_dequantize(codes: Tensor, scales: Tensor) -> Tensor:
    """The fp32 weight [N, K] of `q8_mm`'s operands (for a product of many rows: `DEQUANT_ROWS`)."""
    features, cols = codes.shape
    w = torch.empty(features, cols)
    call("moeqos_q8_dequant", codes.data_ptr(), scales.data_ptr(), features, cols, w.data_ptr(),
          torch.get_num_threads())  # fmt: skip
    return w


def many_rows(x: Tensor, weight: Tensor) -> Tensor:
    """x [M, K] @ weight [N, K] fp32 .T -> [M, N] bf16, through fp32 `mm` (a dequantized weight)."""
    return torch.mm(x.float(), weight.t()).to(torch.bfloat16)


def unpack_nibbles(packed: Tensor, bits: int, count: int) -> Tensor:
    """moeqos.executor.quant.packing.unpack_nibble_bytes in one native pass: uint8 [count / 2] from a
    contiguous CPU `pack_codes` stream of `count` codes (a multiple of 8)."""
    out = torch.empty(count // 2, dtype=torch.uint8)
    call("moeqos_unpack_nibbles", packed.data_ptr(), bits, count, out.data_ptr())
    return out


def q4_fits(cols: int, group: int) -> bool:
    """True if the native int4 kernel takes a weight of K = `cols` with this group size."""
    return cols % INT4_BLOCK == 0 and group % 32 == 0 and cols % group == 0


def q8_fits(cols: int) -> bool:
    """True if the native int8 kernel takes a weight of K = `cols`."""
    return cols % 32 == 0


def pack_q4(codes: Tensor) -> Tensor:
    """uint8 codes [N, K] in 0..15 -> [N, K/2]: per 64-weight block, byte i = code i | code 32 + i << 4."""
    rows, cols = codes.shape
    blocks = codes.contiguous().view(rows, cols // INT4_BLOCK, 2, INT4_BLOCK // 2)  # [N, K/64, 2, 32]
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(rows, cols // 2).contiguous()


def unpack_q4(packed: Tensor) -> Tensor:
    """`pack_q4`'s inverse: [N, K/2] -> uint8 codes [N, K]."""
    rows, half = packed.shape
    blocks = packed.view(rows, half // (INT4_BLOCK // 2), INT4_BLOCK // 2)  # [N, K/64, 32]
    return torch.stack([blocks & 0x0F, blocks >> 4], dim=2).reshape(rows, half * 2)


TORCH_WINS = 0.5
"""torch's op serves a precision only if it takes less than this fraction of the native kernel's time."""

PROBE_SHAPE = (3072, 576)
"""The weight `preferred` times: a default-model expert's fused gate-and-up projection."""

Route = Callable[[Tensor], Tensor]
"""x bf16 [M, K] -> x @ W.T [M, N] bf16 for one weight W."""


@cache
def preferred(precision: str) -> bool:
    """True if the native kernel serves `precision` ("int4", "int8" or "bf16") in this process: built,
    and not much slower than torch's op on one decode row of a PROBE_SHAPE weight (timed once,
    interleaved): torch's op is kept only where it takes under TORCH_WINS of the native kernel's time.
    The bar is low because only the native kernels' weights are readable by the C decode step
    (moeqos.executor.native_decode), which takes every op of a layer out of the step: on a 2-core AVX2
    EPYC an all-int4 decode ran 61 tok/s in C with native int4 experts and 42 tok/s where a noisy probe
    (with the old bar, 0.9x) had kept torch's op, whose experts the C step hands back to PyTorch. For
    int4 the choice also names the layout of the variant files this process writes
    (`cpu_kernels.int4_layout_tag`), so a process that chose otherwise only rebuilds them from the
    portable ones."""
    if library() is None:
        return False
    from moeqos.executor.quant import gemv_paths

    generator = torch.Generator().manual_seed(0)
    torch_route, native_route = routes(precision, torch.randn(*PROBE_SHAPE, generator=generator))
    x = torch.randn(1, PROBE_SHAPE[1], generator=generator).to(torch.bfloat16)  # [1, K]
    timings = gemv_paths.wall_timer()({"torch": lambda: torch_route(x), "native": lambda: native_route(x)})
    chosen = timings["torch"] >= TORCH_WINS * timings["native"]
    log.info(
        "native kernels %s for %s: %.0f vs torch's %.0f µs a decode row",
        "chosen" if chosen else "not chosen",
        precision,
        timings["native"] * 1e6,
        timings["torch"] * 1e6,
    )
    return chosen


def routes(precision: str, weight: Tensor) -> tuple[Route, Route]:
    """(torch's op, the native kernel) for the float `weight` [N, K] stored in `precision` ("int4" with
    groups of 64, "int8" or "bf16"), each in its own layout: what `preferred` and
    `python -m moeqos.bench.kernels --native` time against each other."""
    from moeqos.core.precision import Precision
    from moeqos.executor.quant.cpu_kernels import pack_int4_cpu, scales_and_zeros
    from moeqos.executor.quant.rtn import quantize

    if precision == "bf16":
        w = weight.to(torch.bfloat16)
        return (lambda x: torch.mm(x, w.t())), (lambda x: bf16_mm(x, w))
    q = quantize(weight, Precision(precision), INT4_BLOCK)
    scales = q.scales
    assert scales is not None
    if precision == "int8":
        codes = q.values
        return (
            lambda x: torch.ops.aten._weight_int8pack_mm(x, codes, scales),
            lambda x: q8_mm(x, codes, scales),
        )
    if precision == "int4":
        assert q.zeros is not None
        torch_packed, torch_sz = pack_int4_cpu(q.values), scales_and_zeros(q)  # [G, N, 2]
        packed, halves = pack_q4(q.values), torch.stack([scales, q.zeros])  # [2, N, G]
        return (
            lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, torch_packed, INT4_BLOCK, torch_sz),
            lambda x: q4_mm(x, packed, halves, INT4_BLOCK),
        )
    raise ValueError(f"no native kernel for {precision}")
