"""The service's domain types: what the executor runtime, both servicers and the clients share (one type
per concept; the wire codec, moeqos.api.codec, converts each to and from its message). Plain frozen
dataclasses and enums, never pb2."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from moeqos.core.dense import DenseStatus
from moeqos.core.plan import Plan
from moeqos.core.profile import HardwareIdentity, ModelIdentity, Profile
from moeqos.core.qos import QosTarget
from moeqos.core.rules import PlacementRule
from moeqos.core.tier import TierBudget, TierStatus


@dataclass(frozen=True)
class Sampling:
    """How a generation request samples (validated by the executor)."""

    max_tokens: int = 64
    """Tokens to generate at most."""
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float | None = None
    """Nucleus mass in (0, 1]; None disables it."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    seed: int | None = None
    """Seed for reproducible sampling."""
    stop: tuple[str, ...] = ()
    """Stop strings (not returned)."""


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation; the executor renders a conversation with the model's chat template."""

    role: str
    """`system`, `user` or `assistant`."""
    content: str


@dataclass(frozen=True)
class Prediction:
    """What the planner predicts for a plan."""

    tokens_per_s: float
    perplexity: float
    perplexity_is_estimate: bool = False
    """True when the perplexity rests on priors or extrapolation rather than measured plans."""
    tier_use: dict[str, int] = field(default_factory=dict)
    """Bytes of experts per tier."""
    notes: str = ""
    concurrency: int = 1
    """Streams decoded together; `tokens_per_s` is each stream's."""

    @property
    def aggregate_tokens_per_s(self) -> float:
        """Tokens/s of all `concurrency` streams together."""
        return self.concurrency * self.tokens_per_s


@dataclass(frozen=True)
class PlanOutcome:
    """A plan chosen by the planner, with its predictions."""

    plan: Plan
    prediction: Prediction
    solve_seconds: float = 0.0


@dataclass(frozen=True)
class SwitchReport:
    """What an executor's plan switch did."""

    experts_changed: int
    """Experts whose assignment changed (every expert for the first plan, at load)."""
    seconds: float
    """Wall seconds from validation to the swap, building the changed experts included."""


@dataclass(frozen=True)
class DeployOutcome:
    """The result of a Deploy for one executor."""

    executor_address: str
    plan: Plan
    prediction: Prediction
    report: SwitchReport


class ReplanState(Enum):
    """Where an executor's re-plan against its standing target stands."""

    IDLE = "idle"
    """No re-plan has run since the executor started or the target was set."""
    REPLANNING = "replanning"
    """A re-plan is running now."""
    APPLIED = "applied"
    """The last re-plan applied a plan."""
    RETRYING = "retrying"
    """The planner was unreachable; the re-plan will try again."""
    FAILED = "failed"
    """The last re-plan failed and will not be retried."""
    UNKNOWN = "unknown"
    """The executor sent a state this client does not know (a newer executor) or none."""


@dataclass(frozen=True)
class LiveCalibration:
    """Scales an executor fitted to its live decode steps: the profile it plans from has its fixed cost
    times `fixed_scale` and every call cost times `call_scale` (see moeqos.executor.recalibration)."""

    fixed_scale: float = 1.0
    call_scale: float = 1.0
    steps: int = 0
    """Live decode steps fitted (0: the measured profile as is)."""
    window_seconds: float = 0.0
    """How far back those steps go."""

    def describe(self) -> str:
        if self.steps == 0:
            return "as measured"
        return (
            f"live: fixed x{self.fixed_scale:.2f}, calls x{self.call_scale:.2f} "
            f"({self.steps} steps over {self.window_seconds:.0f}s)"
        )


class QosState(Enum):
    """Whether the standing throughput floor holds, as measured over the executor's last window."""

    NO_FLOOR = "no-floor"
    """No standing throughput floor (or the executor does not measure: an older one)."""
    MET = "met"
    """The floor holds (or too few tokens were decoded in the window to say otherwise)."""
    VIOLATED = "violated"
    """The measured rate is below the floor beyond the tolerance."""
    REPLANNING = "replanning"
    """A re-plan against the target is running (or retrying) now."""
    UNKNOWN = "unknown"
    """The executor sent a state this client does not know (a newer executor) or none."""


@dataclass(frozen=True)
class QosStatus:
    """The standing floor as held live (GetInfo): target, prediction, measurement, verdict."""

    state: QosState
    loop: bool
    """Whether the closed loop re-plans on its own (False: open loop, measured but not acted on)."""
    floor_tokens_per_s: float | None
    predicted_tokens_per_s: float | None
    """What the profile the plan in force was chosen from predicts for its decode, over the measured
    overhead of the clients' rate (prefills, waits): the rate its clients should see."""
    measured_tokens_per_s: float | None
    """The streams' rate as their clients see it over the last window: their decode rate over the
    measured overhead (None: too few tokens decoded)."""
    window_seconds: float
    calibration: str
    """For people: how the live calibration scales the measured profile."""
    last_decision: str
    """For people: the loop's last decision and its reason."""


@dataclass(frozen=True)
class ExecutorInfo:
    """An executor's identity and state (GetInfo)."""

    name: str
    model: ModelIdentity
    hardware: HardwareIdentity
    tiers: tuple[TierStatus, ...]
    plan: Plan
    plan_applied_at: datetime | None
    standing_target: QosTarget | None
    planner_address: str
    active_generations: int
    queued_generations: int
    profile_cached: bool
    replan_state: ReplanState = ReplanState.IDLE
    """Where the standing target's last re-plan stands."""
    replan_detail: str = ""
    """For people: the plan applied (APPLIED) or the error (RETRYING, FAILED); empty otherwise."""
    damaged_files: int = 0
    """Damaged or missing variant files found since start (each rebuilt from the checkpoint)."""
    integrity: str = "ok"
    """`ok`, or how many files were damaged and mended and the last problem."""
    standing_pins: tuple[PlacementRule, ...] = ()
    """The pin rules re-plans against the standing target keep."""
    target_generation: int = 0
    """Counts SetTarget and ApplyPlan calls; a re-plan started under an older one never applies."""
    qos: QosStatus | None = None
    """The standing floor as measured live (None from an executor that does not report it)."""
    max_batch_size: int = 0
    """Generations decoded together at most (the batch size); more wait in the queue."""
    max_queued_generations: int = 0
    """Generations that may wait for a place; more are refused (RESOURCE_EXHAUSTED)."""
    max_tokens_in_flight: int = 0
    """KV tokens the running generations may reserve at most (prompt plus max_tokens each)."""
    tokens_in_flight: int = 0
    """KV tokens the running generations reserve now."""
    dense: tuple[DenseStatus, ...] = ()
    """Every dense element with the precision it is served in and its bytes (moeqos.core.dense)."""
    variants_ahead: str = ""
    """For people: the variants built ahead on disk and the precisions skipped, with why (empty: not
    reported)."""
    last_switch: SwitchReport | None = None
    """The last plan switch since start (None before any; the first plan, at load, is not counted)."""


@dataclass(frozen=True)
class BudgetOutcome:
    """The result of SetBudget."""

    plan_fits: bool
    """Whether the plan in force fits the new budget."""
    replan_started: bool
    """Whether the executor started re-planning against its standing target."""
    tiers: tuple[TierStatus, ...]


@dataclass(frozen=True)
class GenerationStats:
    """Per-request statistics, carried by the last event of a generation."""

    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    """From the request's start to its first generated token (prefill + one step)."""
    tokens_per_s: float
    """Decode rate after the first token: (n - 1) / (t_last - t_first); n / total when n < 2."""
    total_s: float
    """From the request's start to its end."""
    finish_reason: str
    """`length`, `stop`, `eos` or `cancelled`."""
    plan_spec: str
    """Spec of the plan in force when the request finished."""


@dataclass(frozen=True)
class GenerationEvent:
    """One streamed piece: a token (`stats` None) or the end of the request (`stats` set)."""

    text: str
    """Text this event adds (may be empty while a character or a possible stop string is held back)."""
    token_id: int | None
    """The generated token; None on the last event."""
    stats: GenerationStats | None = None


@dataclass(frozen=True)
class Completion:
    """A whole generation (Complete)."""

    text: str
    stats: GenerationStats


@dataclass(frozen=True)
class Evaluation:
    """Perplexity and speed under a plan on a corpus."""

    perplexity: float
    tokens_per_s: float
    """Greedy decode rate over exactly `decode_tokens` tokens, end-of-sequence ignored, after one untimed
    warm-up run (0 when none was asked for)."""
    tokens: int
    """Tokens scored."""
    plan_spec: str
    """Spec of the plan evaluated."""
    corpus: str
    """Label of the text scored (`ptb:valid`; empty when the caller gave none)."""
    seconds: float
    """Wall time of the whole evaluation, plan switches included."""
    decode_tokens: int
    """Tokens the timed decode generated (0: no decode was timed)."""


@dataclass(frozen=True)
class ProfileProgress:
    """Progress of a profile measurement."""

    stage: str
    """What is being measured now."""
    done: int
    """Units done in this stage."""
    total: int
    """Units in this stage (0: unknown)."""


@dataclass(frozen=True)
class DeploySpec:
    """One executor of a Deploy and the target it must meet (and then hold as its standing target)."""

    executor_address: str
    target: QosTarget
    budgets: tuple[TierBudget, ...] = ()
    """Budgets to plan within; empty uses the executor's current tiers."""
    pins: tuple[PlacementRule, ...] = ()
    """Ordered rules fixing some experts' precision (and tier)."""
    concurrency: int = 0
    """Streams the throughput floor holds for each; 0: the concurrency the executor reports (its active
    generations, at least 1 and at most its batch size)."""


@dataclass(frozen=True)
class WhatIfOutcome:
    """What-if answers for a described model and machine."""

    profile: Profile
    """The analytic profile the answers were planned from."""
    best: PlanOutcome | None
    """The best plan for the target (None when no target was given)."""
    frontier: tuple[PlanOutcome, ...] = ()
