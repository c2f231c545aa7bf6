"""Timing whole decode steps with the experts switched off, or with each expert call credited at a
known cost: what `moeqos.executor.costs.calibrate` and `moeqos.executor.disk_calibration` build on.

A round is STEPS_PER_ROUND single-token steps on one KV cache; a measurement is the fastest of several
rounds, since load on the machine only ever adds time. A difference between two modes is measured
apart (`paired_steps`): one step of each in turn, the median over the pairs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.executor.measurement import Measurable

STEPS_PER_ROUND = 4
"""Decode steps per round; a round's time is averaged over them."""


def decode_step(runtime: Measurable, prompt: list[int]) -> Callable[[], object]:
    """One single-token forward step on a KV cache prefilled with `prompt` (each call appends to it)."""
    cache = runtime.new_cache()
    runtime.forward_logits(torch.tensor([prompt]), cache, keep=1)
    token = torch.tensor([[prompt[-1]]])  # [1, 1]
    return lambda: runtime.forward_logits(token, cache, keep=1)


def fastest_round(step: Callable[[], object], rounds: int, device: str, mode: RoundMode) -> float:
    """Minimum over `rounds` rounds of (round time - mode.credit()) / STEPS_PER_ROUND, after one
    warm-up round."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with mode:
        for _ in range(rounds + 1):
            mode.reset()
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                step()
            sync()
            times.append((time.perf_counter() - start - mode.credit()) / STEPS_PER_ROUND)
    return min(times[1:])


PAIRS = 16
"""Step pairs timed for one calibration (`paired_steps`)."""

STEP_PROMPT_TOKENS = 16
"""Tokens prefilled before the timed decode steps of a profile (the calibration and the dense stage)."""


@dataclass(frozen=True)
class StepPair:
    """One baseline step and the trial step after it, each less its mode's credit."""

    baseline: float
    """Seconds of the baseline step."""
    added: float
    """Seconds the trial step took over the baseline step."""
    uncredited: float
    """The cold cost of the calls the trial left uncredited (`CallSeconds.uncredited_total`; 0 when
    no CallSeconds was given)."""


def paired_steps(
    step: Callable[[], object],
    pairs: int,
    device: str,
    baseline: RoundMode,
    trial: RoundMode,
    calls: CallSeconds | None = None,
) -> list[StepPair]:
    """`pairs` pairs of single steps, one in `baseline` then one in `trial`, after a warm-up pair;
    `calls`: the CallSeconds inside `trial` (itself or wrapped) whose uncredited calls are priced.

    Why pairs of single steps rather than the fastest round of each mode: on a shared machine a
    step's time swings by 20-40% from one second to the next, and the fastest rounds of two modes,
    taken seconds apart, differed by more than the calls being priced (measured on the default model,
    int4 calls on a bf16 plan calibrated at 35-551 us across runs, against ~85 us from whole decode
    runs). Steps taken one after the other share the machine's state, and the median over the pairs
    (`paired_scale`, or of `added`) ignores the pairs a burst of load hit.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def rest(mode: RoundMode) -> float:
        with mode:
            mode.reset()
            start = time.perf_counter()
            step()
            sync()
            return time.perf_counter() - start - mode.credit()

    timed = []
    for _ in range(pairs + 1):
        base = rest(baseline)
        added = rest(trial) - base
        timed.append(StepPair(base, added, calls.uncredited_total if calls is not None else 0.0))
    return timed[1:]


def paired_scale(pairs: Sequence[StepPair]) -> float | None:
    """The factor from the uncredited calls' cold costs to the time they add to a step: the median of
    added / uncredited over the pairs that left calls uncredited; None when none did."""
    ratios = [pair.added / pair.uncredited for pair in pairs if pair.uncredited > 0]
    return statistics.median(ratios) if ratios else None


class RoundMode:
    """How the MoE blocks behave while rounds are timed, and the expert time to subtract per round."""

    def __init__(self, runtime: Measurable) -> None:
        self.blocks = runtime.moe_blocks()

    def reset(self) -> None:
        """Called before each round."""

    def credit(self) -> float:
        return 0.0

    def __enter__(self) -> None:
        """Switch the blocks into this mode."""

    def __exit__(self, *exc_info: object) -> None:
        """Switch them back."""


class ExpertsOff(RoundMode):
    def __enter__(self) -> None:
        for block in self.blocks:
            block.experts_enabled = False

    def __exit__(self, *exc_info: object) -> None:
        for block in self.blocks:
            block.experts_enabled = True


class CallSeconds(RoundMode):
    """Experts on; credits each routed call with its measured one-token cost under `plan`, except the
    calls in `uncredited` layers, whose costs are summed apart (`uncredited_total`): their real time
    stays in the round's measured rest."""

    def __init__(
        self,
        runtime: Measurable,
        plan: Plan,
        seconds: dict[tuple[Precision, str], float],
        uncredited: frozenset[int] = frozenset(),
    ):
        super().__init__(runtime)
        self.cost = [[seconds[a.precision, a.tier] for a in row] for row in plan.assignments]  # [L][E]
        self.uncredited = uncredited
        self.total = 0.0
        self.uncredited_total = 0.0

    def observe(self, layer: int, hidden: torch.Tensor, index: torch.Tensor) -> None:
        seconds = sum(self.cost[layer][e] for e in index.flatten().tolist())
        if layer in self.uncredited:
            self.uncredited_total += seconds
        else:
            self.total += seconds

    def reset(self) -> None:
        self.total = 0.0
        self.uncredited_total = 0.0

    def credit(self) -> float:
        return self.total

    def __enter__(self) -> None:
        for block in self.blocks:
            block.observer = self.observe

    def __exit__(self, *exc_info: object) -> None:
        for block in self.blocks:
            block.observer = None


class TurnedIn(RoundMode):
    """`inner` with a trial plan turned in for the time of each step or round: `turn(True)` serves it,
    `turn(False)` the plan before (the `turn` of `Measurable.alternating`)."""

    def __init__(self, runtime: Measurable, turn: Callable[[bool], None], inner: RoundMode) -> None:
        super().__init__(runtime)
        self.turn, self.inner = turn, inner

    def reset(self) -> None:
        self.inner.reset()

    def credit(self) -> float:
        return self.inner.credit()

    def __enter__(self) -> None:
        self.turn(True)
        self.inner.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self.inner.__exit__(*exc_info)
        self.turn(False)
