"""Where a decode step's time goes: torch.profiler over single-token steps, split by model part.

Parts are labelled with `torch.profiler.record_function` ranges opened by forward hooks on the model's
own modules (installed only while profiling, so serving pays nothing) and by a runner wrapper around
each MoE block's expert calls:

- `experts`: the expert calls (`ExpertRunner.run`, and `run_token`, which for a decode token also
  mixes the K outputs), whatever kernel they use;
- `routing`: the rest of each MoE block (router matmul, top-k, dispatch, combining the outputs);
- `attention`: the attention modules (projections, rotary embedding, cache update, SDPA);
- `norms`: RMS/layer norms; `lm_head`; `embedding`;
- `other`: the step's wall time outside every labelled part (residual adds, mask and cache bookkeeping
  of the model code, Python between modules).

Where the C decode step runs the layers (moeqos.executor.native_decode), the profiler sees one op; the
step clocks its own halves instead: its attention halves (with the norms and the router in them) are
added to `attention`, its MoE halves to `experts`, and `norms` and `routing` hold only what ran in
PyTorch (the final norm).

Times are wall-clock per step under the profiler, which adds a little to every op; the split, not the
absolute figure, is the point. Ranges are host (CPU) time: on an accelerator, where kernels run
asynchronously, they show launch cost, not device time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from moeqos.executor.measurement import Measurable
from moeqos.executor.moe import ExpertRunner, MoeBlock
from moeqos.executor.quant import QuantExpert
from moeqos.executor.step_timing import decode_step
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

PARTS = ("experts", "routing", "attention", "norms", "lm_head", "embedding", "other")
"""The parts of a decode step, in table order."""

_STEP = "decode_step"
_MOE = "moe_block"


@dataclass(frozen=True)
class StepBreakdown:
    """Seconds per decode step, in all and per part, with the ops that took the most self time."""

    steps: int
    step_seconds: float
    parts: dict[str, float]
    """Part -> seconds per step (see the module docstring); the parts sum to `step_seconds`."""
    top_ops: tuple[tuple[str, float, float], ...]
    """(op name, self seconds per step, calls per step), most time first."""


class _LabelledRunner:
    """An `ExpertRunner` that opens an `experts` profiler range around each call."""

    def __init__(self, inner: ExpertRunner) -> None:
        self.inner = inner

    def run(self, layer: int, expert: int, x: torch.Tensor) -> torch.Tensor:
        with record_function("experts"):
            return self.inner.run(layer, expert, x)

    def run_token(
        self, layer: int, experts: list[int], x: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        with record_function("experts"):
            return self.inner.run_token(layer, experts, x, weights)

    def device_experts(self, layer: int, experts: list[int]) -> list[QuantExpert] | None:
        return self.inner.device_experts(layer, experts)


def _part_of(module: nn.Module, lm: nn.Module) -> str | None:
    """The label of a module that roots a part, None for the others."""
    name = type(module).__name__
    if isinstance(module, MoeBlock):
        return _MOE
    if module is lm.get_output_embeddings():
        return "lm_head"
    if module is lm.get_input_embeddings():
        return "embedding"
    if "Attention" in name or "Rotary" in name:
        return "attention"
    if "Norm" in name:
        return "norms"
    return None


def _label(module: nn.Module, label: str, stack: ExitStack) -> None:
    """Open `label` around every forward of `module` until `stack` closes."""
    ranges: list[Any] = []

    def enter(*_: object) -> None:
        ranges.append(record_function(label).__enter__())

    def leave(*_: object) -> None:
        ranges.pop().__exit__(None, None, None)

    stack.callback(module.register_forward_pre_hook(enter).remove)
    stack.callback(module.register_forward_hook(leave).remove)


@contextmanager
def labelled(lm: nn.Module, *others: nn.Module, runners: bool = True) -> Iterator[None]:
    """Inside the block, every part root of `lm` and of `others` (e.g. the own decode step,
    moeqos.executor.fast_decode, which shares the model's MoE blocks and slots) runs inside its
    profiler range; a module reached from two roots, or inside a labelled one, is labelled once.
    `runners`: the MoE blocks' expert calls are labelled too (a wrapped runner keeps the C decode step
    from reading the experts itself, so it is off while that step is profiled)."""
    with ExitStack() as stack:
        covered: set[int] = set()
        """ids of labelled modules and of everything under them."""
        for root in (lm, *others):
            for module in root.modules():
                part = _part_of(module, lm)
                if part is None or id(module) in covered:
                    continue
                covered.update(id(m) for m in module.modules())
                _label(module, part, stack)
                if isinstance(module, MoeBlock) and runners:
                    inner = module.runner
                    module.runner = _LabelledRunner(inner)
                    stack.callback(setattr, module, "runner", inner)
        yield


def decode_breakdown(
    runtime: Measurable, lm: nn.Module, prompt: list[int], steps: int, decoder: nn.Module | None = None
) -> StepBreakdown:
    """Profile `steps` single-token decode steps of `runtime`, whose model is `lm` and own decode step
    `decoder` (if any), after prefilling `prompt` (one warm-up step). Runs `exclusive()`ly: no
    request's step is labelled or profiled."""
    native = getattr(decoder, "native", None)
    with runtime.exclusive():
        step = decode_step(runtime, prompt)
        before = 0 if native is None else native.steps
        step()
        in_c = native is not None and native.steps > before  # the warm-up step ran in C: so will these
        extra = () if decoder is None else (decoder,)
        with ExitStack() as stack:
            stack.enter_context(labelled(lm, *extra, runners=not in_c))
            clock = stack.enter_context(native.timed()) if in_c else None
            prof = stack.enter_context(profile(activities=[ProfilerActivity.CPU]))
            for _ in range(steps):
                with record_function(_STEP):
                    step()
    return _summarise(prof, steps, None if clock is None else (clock[0], clock[1]))


def _summarise(prof: Any, steps: int, in_c: tuple[float, float] | None) -> StepBreakdown:
    """The parts per step; `in_c`: the C decode step's own seconds of attention halves and MoE halves
    (the profiler sees a C call as one op), added to `attention` (which then holds the norms and the
    router too) and `experts`."""
    totals: dict[str, float] = {}
    for event in prof.events():
        totals[event.name] = totals.get(event.name, 0.0) + event.cpu_time_total * 1e-6 / steps
    step_seconds = totals.get(_STEP, 0.0)
    parts = {part: totals.get(part, 0.0) for part in PARTS[:-1]}
    parts["routing"] = totals.get(_MOE, 0.0) - parts["experts"]
    if in_c is not None:
        parts["attention"] += in_c[0] / steps
        parts["experts"] += in_c[1] / steps
    parts["other"] = step_seconds - sum(parts.values())
    labels = {*PARTS, _STEP, _MOE}
    ops = [e for e in prof.key_averages() if e.key not in labels]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    top = tuple((e.key, e.self_cpu_time_total * 1e-6 / steps, e.count / steps) for e in ops[:8])
    return StepBreakdown(steps, step_seconds, parts, top)
