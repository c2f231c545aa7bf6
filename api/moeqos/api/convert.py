"""Conversions between the service messages (executor.v1, planner.v1) and the typed results of
moeqos.core.service_types, both directions: clients read with `*_from_proto`, servicers build with `*_to_proto`."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from moeqos.api import wire
from moeqos.core import service_types as t
from moeqos.proto.common.v1 import common_pb2
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.planner.v1 import planner_pb2 as pl


# ----- predictions, plans, switches ---------------------------------------------------------------
def prediction_to_proto(p: t.Prediction) -> common_pb2.PlanPrediction:
    return common_pb2.PlanPrediction(
        tokens_per_s=p.tokens_per_s,
        perplexity=p.perplexity,
        perplexity_is_estimate=p.perplexity_is_estimate,
        tier_use=[common_pb2.TierUse(name=n, bytes=b) for n, b in p.tier_use.items()],
        notes=p.notes,
    )


def prediction_from_proto(m: common_pb2.PlanPrediction) -> t.Prediction:
    return t.Prediction(
        m.tokens_per_s, m.perplexity, m.perplexity_is_estimate, {u.name: u.bytes for u in m.tier_use}, m.notes
    )


def outcome_from_proto(m: pl.PlanResponse | pl.FrontierPoint) -> t.PlanOutcome:
    seconds = m.solve_seconds if isinstance(m, pl.PlanResponse) else 0.0
    return t.PlanOutcome(wire.plan_from_proto(m.plan), prediction_from_proto(m.prediction), seconds)


def switch_to_proto(r: t.SwitchReport) -> common_pb2.SwitchReport:
    return common_pb2.SwitchReport(experts_changed=r.experts_changed, seconds=r.seconds)


def switch_from_proto(m: common_pb2.SwitchReport) -> t.SwitchReport:
    return t.SwitchReport(m.experts_changed, m.seconds)


def deploy_from_proto(m: pl.DeployResult) -> t.DeployOutcome:
    return t.DeployOutcome(
        m.executor_address,
        wire.plan_from_proto(m.plan),
        prediction_from_proto(m.prediction),
        switch_from_proto(m.report),
    )


# ----- executor state -----------------------------------------------------------------------------
def timestamp(when: datetime | None) -> Timestamp | None:
    if when is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def info_from_proto(m: ex.GetInfoResponse) -> t.ExecutorInfo:
    return t.ExecutorInfo(
        name=m.name,
        model=wire.model_from_proto(m.model),
        hardware=wire.hardware_from_proto(m.hardware),
        tiers=tuple(wire.tier_status_from_proto(s) for s in m.tiers),
        plan=wire.plan_from_proto(m.plan),
        plan_applied_at=m.plan_applied_at.ToDatetime(UTC) if m.HasField("plan_applied_at") else None,
        standing_target=wire.target_from_proto(m.standing_target) if m.HasField("standing_target") else None,
        planner_address=m.planner_address,
        active_generations=m.active_generations,
        queued_generations=m.queued_generations,
        profile_cached=m.profile_cached,
        replan_state=m.replan_state,
    )


def budget_from_proto(m: ex.SetBudgetResponse) -> t.BudgetOutcome:
    return t.BudgetOutcome(
        m.plan_fits, m.replan_started, tuple(wire.tier_status_from_proto(s) for s in m.tiers)
    )


# ----- generation and evaluation ------------------------------------------------------------------
def sampling_to_proto(s: t.Sampling) -> ex.SamplingParams:
    message = ex.SamplingParams(
        max_tokens=s.max_tokens, temperature=s.temperature, top_k=s.top_k, stop=s.stop
    )
    if s.top_p is not None:
        message.top_p = s.top_p
    if s.seed is not None:
        message.seed = s.seed
    return message


def stats_to_proto(s: t.GenerationStats) -> ex.GenerationStats:
    return ex.GenerationStats(**s.__dict__)


def stats_from_proto(m: ex.GenerationStats) -> t.GenerationStats:
    return t.GenerationStats(
        m.prompt_tokens,
        m.generated_tokens,
        m.time_to_first_token_s,
        m.tokens_per_s,
        m.total_s,
        m.finish_reason,
        m.plan_spec,
    )


def event_from_proto(m: ex.GenerateResponse) -> t.GenerationEvent:
    token = m.token_id if m.HasField("token_id") else None
    return t.GenerationEvent(m.text, token, stats_from_proto(m.stats) if m.HasField("stats") else None)


def completion_from_proto(m: ex.CompleteResponse) -> t.Completion:
    return t.Completion(m.text, stats_from_proto(m.stats))


def evaluation_from_proto(m: ex.EvaluateResponse) -> t.Evaluation:
    return t.Evaluation(m.perplexity, m.tokens_per_s, m.tokens, m.plan_spec, m.corpus, m.decode_tokens)
