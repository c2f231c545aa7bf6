"""Typed results of the client calls: plain frozen dataclasses and moeqos domain types, never pb2."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
class Prediction:
    """What the planner predicts for a plan."""

    tokens_per_s: float
    perplexity: float
    perplexity_is_estimate: bool = False
    """True when the perplexity rests on priors or extrapolation rather than measured plans."""
    tier_use: dict[str, int] = field(default_factory=dict)
    """Bytes of experts per tier."""
    notes: str = ""


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
    seconds: float


@dataclass(frozen=True)
class DeployOutcome:
    """The result of a Deploy for one executor."""

    executor_address: str
    plan: Plan
    prediction: Prediction
    report: SwitchReport


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
    replan_state: str = "idle"
    """The standing target's last re-plan (`idle`, `replanning`, `applied: PLAN`, `failed: ...`)."""


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
    tokens_per_s: float
    total_s: float
    finish_reason: str
    """`length`, `stop`, `eos` or `cancelled`."""
    plan_spec: str


@dataclass(frozen=True)
class GenerationEvent:
    """One streamed token's text; the last event also has `stats`."""

    text: str
    token_id: int | None
    """None on the last event."""
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
    """Greedy decode rate over exactly `decode_tokens` tokens (end-of-sequence ignored, after a warm-up)."""
    tokens: int
    plan_spec: str
    corpus: str
    decode_tokens: int = 0
    """Tokens the timed decode generated."""


@dataclass(frozen=True)
class ProfileProgress:
    """Progress of a profile measurement."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class DeploySpec:
    """One executor of a Deploy and the target it must meet (and then hold as its standing target)."""

    executor_address: str
    target: QosTarget
    budgets: tuple[TierBudget, ...] = ()
    """Budgets to plan within; empty uses the executor's current tiers."""
    pins: tuple[PlacementRule, ...] = ()
    """Ordered rules fixing some experts' precision (and tier)."""


@dataclass(frozen=True)
class WhatIfOutcome:
    """What-if answers for a described model and machine."""

    profile: Profile
    """The analytic profile the answers were planned from."""
    best: PlanOutcome | None
    """The best plan for the target (None when no target was given)."""
    frontier: tuple[PlanOutcome, ...] = ()
