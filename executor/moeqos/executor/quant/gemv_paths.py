"""Float x @ W.T on the CPU, through whichever torch op is fastest here, chosen by timing.

A decode step multiplies one row (or a few, batched) by every float weight: the attention projections,
the lm head and bf16 experts. torch sends a 2-D `mm` in bf16 to oneDNN, which for one row is up to ~2x
slower than `mv` on the same bytes (cpublas' gemv), and which op wins depends on the shape, the dtype,
the row count and the thread count (README "Float matmuls for a few rows"). So each (rows, N, K, dtype,
threads) is timed once at first use on the real operands, every candidate op in interleaved rounds, and
the winner kept in a process-wide table. Threads are in the key because the QoS loop's thread knob
changes them at run time.

Candidates compute the same product from the same [N, K] weight (no second layout: a pre-transposed copy
would double the bytes the byte contract counts): `mm` (torch's own route), `mv` (one row), `mm_wx`
(W @ x.T, transposed back; the gemm with the weight as the left operand) and, for two or more rows of a
16-bit weight, `mm_f32` (both operands widened to fp32 for the product, the result rounded back once).
oneDNN's non-default route for `mm` is not among them: torch selects it only through a process-wide
flag, which one thread cannot flip without changing every other thread's matmuls. For up to
`MAX_ROWS` rows of a bf16 weight `native` (moeqos.executor.quant.native: fp32 FMAs on the weight widened
in registers, four rows of activations per pass) is a candidate too, where its library is built (AVX2
AMD EPYC, 3072x576 from memory, 2 threads: 142 µs a row against `mm`'s 211; 16 rows 0.88 ms against 2.9).

`mm_f32` is for CPUs that do not compute bf16 natively: with AVX2 alone (an AMD EPYC VM, 2026-12-04)
torch's bf16 `mm` ran at ~10 GFLOP/s against ~88 for fp32 `mm` on the same core (1536x576, one thread:
8 rows 1.46 ms vs 0.46 ms widened, 512 rows 101 ms vs 10.7 ms). More than `MAX_ROWS` rows (a prefill,
a perplexity evaluation, a profile's passes, a large batch) share one key per (N, K, dtype, threads),
with row count `MANY`, timed on the call's first `PROBE_ROWS` rows: past a few rows a GEMM's time is
linear in M, so the ranking there holds above it (below it, only a weight whose widening is dear can
rank the other way: the default model's 49152x576 head, ~90 ms to widen, by a few percent at 17-20 rows,
which only a perplexity window that short gives it). fp32 weights of that many rows, other devices,
non-contiguous weights and activations with strided rows take `mm` untimed.

Shape legend: M rows of activations, K input features, N output features.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import torch
from moeqos.executor.quant import native
from torch import Tensor

Op = Callable[[Tensor, Tensor], Tensor]
"""x [M, K], w [N, K] -> x @ w.T [M, N], contiguous."""

Key = tuple[int, int, int, torch.dtype, int]
"""(M, N, K, dtype, threads) of one timed choice; M is `MANY` for every row count above `MAX_ROWS`."""

Timer = Callable[[Mapping[str, Callable[[], object]]], dict[str, float]]
"""Candidate name -> one call of it, to seconds per call of each (tests inject fake timings)."""

MAX_ROWS = 16
"""Up to this many rows each row count is a key of its own; above it one key (`MANY`) serves them all."""

MANY = MAX_ROWS + 1
"""The row count in the key of every product of more than `MAX_ROWS` rows."""

PROBE_ROWS = 32
"""Rows a `MANY` key's candidates are timed on: a GEMM's regime, and few enough that timing the slow
route of the default model's 49152x576 head stays near a second, once per process and thread count."""

MARGIN = 0.9
"""Another op replaces `mm` only when it times below MARGIN x mm's time: near a tie the timing is noise
and torch's own route stays."""


def _mm(x: Tensor, w: Tensor) -> Tensor:
    return torch.mm(x, w.t())  # [M, N]


# One row: `view`s rather than x[0] / x.t() / [None] (5 and 4 aten ops against 7 and 9; the decode
# step is counted in aten ops, tests/executor/test_decode_ops.py).
def _mv(x: Tensor, w: Tensor) -> Tensor:
    return torch.mv(w, x.view(-1)).view(1, -1)  # [1, N]


def _mm_wx(x: Tensor, w: Tensor) -> Tensor:
    if x.shape[0] == 1:
        return torch.mm(w, x.view(-1, 1)).view(1, -1)  # [1, N]
    return torch.mm(w, x.t()).t().contiguous()  # [M, N]


def _mm_f32(x: Tensor, w: Tensor) -> Tensor:
    return torch.mm(x.float(), w.float().t()).to(x.dtype)  # [M, N]; fp32 copies of both for the call


CANDIDATES: Mapping[str, Op] = {
    "mm": _mm,
    "mv": _mv,
    "mm_wx": _mm_wx,
    "mm_f32": _mm_f32,
    "native": native.bf16_mm,
}
"""Every op that may compute x @ w.T; `mm` first (the default and the reference for MARGIN)."""


def candidates(rows: int, dtype: torch.dtype, cols: int = 0) -> dict[str, Op]:
    """The candidate ops for `rows` rows of `dtype` and `cols` input features (`MANY` rows: more than
    `MAX_ROWS`): `mv` takes exactly one row, `mm_wx` up to `MAX_ROWS`, `mm_f32` two or more of a 16-bit
    dtype (for one row, widening the weight costs more than the product it could speed up; for fp32 it
    is `mm`), `native` up to `MAX_ROWS` rows of bf16 with `cols` a multiple of 8 where the native library
    is built (timed on 32 rows it won the `MANY` key and lost at 512: four rows per pass over the
    weight, where a GEMM blocks for many)."""
    names = ["mm"]
    if rows == 1:
        names.append("mv")
    if rows <= MAX_ROWS:
        names.append("mm_wx")
    if rows >= 2 and dtype != torch.float32:
        names.append("mm_f32")
    if rows <= MAX_ROWS and dtype == torch.bfloat16 and cols % 8 == 0 and native.library() is not None:
        names.append("native")
    return {name: CANDIDATES[name] for name in names}


def wall_timer(rounds: int = 5, budget_s: float = 2e-4) -> Timer:
    """A timer of candidates in `rounds` interleaved rounds (a burst of load elsewhere then slows all of
    them alike), each run of enough calls to last about `budget_s`; per candidate the best round (the
    best, not the mean: other processes only ever add time)."""

    def measure(calls: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        repeats = {name: _calls_in(call, budget_s) for name, call in calls.items()}
        best = dict.fromkeys(calls, float("inf"))
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                for _ in range(repeats[name]):
                    call()
                best[name] = min(best[name], (time.perf_counter() - start) / repeats[name])
        return best

    return measure


def _calls_in(call: Callable[[], object], budget_s: float) -> int:
    """How many calls of `call` last about `budget_s` (1 to 64), after one warm-up call (first-call
    allocations, the thread pool's start)."""
    call()
    start = time.perf_counter()
    call()
    return max(1, min(64, int(budget_s / max(time.perf_counter() - start, 1e-7))))


def fastest(timings: Mapping[str, float]) -> str:
    """The chosen candidate of measured seconds per call: the fastest, unless it beats `mm` (when timed)
    by less than MARGIN."""
    best = min(timings, key=lambda name: timings[name])
    if "mm" in timings and timings[best] >= MARGIN * timings["mm"]:
        return "mm"
    return best


class GemvPaths:
    """The table of chosen ops, filled by timing at first use of each key."""

    def __init__(self, timer: Timer | None = None) -> None:
        self.timer = timer or wall_timer()
        self.chosen: dict[Key, str] = {}
        """Key -> name of the op it runs (read without the lock: a dict lookup is atomic)."""
        self._ops: dict[Key, Op] = {}
        self._lock = threading.Lock()

    def matmul(self, x: Tensor, w: Tensor) -> Tensor:
        """x [M, K] @ w [N, K].T -> [M, N] in their common dtype, through the op chosen for this key."""
        rows = x.shape[0]
        untimed = x.device.type != "cpu" or not w.is_contiguous() or x.stride(-1) != 1
        if untimed or (rows > MAX_ROWS and w.dtype == torch.float32):
            return torch.mm(x, w.t())  # [M, N]
        key = (min(rows, MANY), w.shape[0], w.shape[1], w.dtype, torch.get_num_threads())
        op = self._ops.get(key)
        if op is None:
            op = self._choose(key, x[:PROBE_ROWS], w)
        return op(x, w)  # [M, N]

    def _choose(self, key: Key, x: Tensor, w: Tensor) -> Op:
        # One thread times at a time: two timings at once would each slow the other's candidates.
        with self._lock:
            if key not in self._ops:
                ops = candidates(key[0], key[3], key[2])
                timings = self.timer({name: _bound(op, x, w) for name, op in ops.items()})
                name = fastest(timings)
                self.chosen[key], self._ops[key] = name, ops[name]
            return self._ops[key]


def _bound(op: Op, x: Tensor, w: Tensor) -> Callable[[], object]:
    """One call of `op` on these operands, for a timer."""
    return lambda: op(x, w)


PATHS = GemvPaths()
"""The process's table: every float kernel and dense slot of a shape shares one timing."""


def matmul(x: Tensor, w: Tensor) -> Tensor:
    """x [M, K] @ w [N, K].T -> [M, N] through the process table (see `GemvPaths.matmul`)."""
    return PATHS.matmul(x, w)
