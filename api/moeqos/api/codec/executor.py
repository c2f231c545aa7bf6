"""The codec of moeqos.executor.v1: executor state, budgets, sampling, generation, evaluation and profile
measurement, both directions (servicers build with `*_to_proto`, clients read with `*_from_proto`).

Fields are converted one by one, by name; the shared parts go through moeqos.api.codec.common.
"""

from __future__ import annotations

from moeqos.api.codec import common
from moeqos.core.dense import DenseElement, DenseStatus
from moeqos.core.errors import InvalidArgument
from moeqos.core.profile import Profile
from moeqos.core.service_types import (
    BudgetOutcome,
    ChatMessage,
    Completion,
    Evaluation,
    ExecutorInfo,
    GenerationEvent,
    GenerationStats,
    LiveCalibration,
    ProfileProgress,
    QosState,
    QosStatus,
    ReplanState,
    Sampling,
)
from moeqos.proto.executor.v1 import executor_pb2 as ex

_REPLAN_STATES = {
    ReplanState.IDLE: ex.REPLAN_STATE_IDLE,
    ReplanState.REPLANNING: ex.REPLAN_STATE_REPLANNING,
    ReplanState.APPLIED: ex.REPLAN_STATE_APPLIED,
    ReplanState.RETRYING: ex.REPLAN_STATE_RETRYING,
    ReplanState.FAILED: ex.REPLAN_STATE_FAILED,
    ReplanState.UNKNOWN: ex.REPLAN_STATE_UNSPECIFIED,
}
_REPLAN_STATES_BACK = {value: state for state, value in _REPLAN_STATES.items()}
_QOS_STATES = {
    QosState.NO_FLOOR: ex.QOS_STATE_NO_FLOOR,
    QosState.MET: ex.QOS_STATE_MET,
    QosState.VIOLATED: ex.QOS_STATE_VIOLATED,
    QosState.REPLANNING: ex.QOS_STATE_REPLANNING,
    QosState.UNKNOWN: ex.QOS_STATE_UNSPECIFIED,
}
_QOS_STATES_BACK = {value: state for state, value in _QOS_STATES.items()}


# ----- executor state -----------------------------------------------------------------------------
def replan_state_to_proto(state: ReplanState) -> ex.ReplanState:
    return _REPLAN_STATES[state]


def replan_state_from_proto(value: int) -> ReplanState:
    """The domain state; UNKNOWN for UNSPECIFIED or a value this build does not know (a newer executor)."""
    return _REPLAN_STATES_BACK.get(value, ReplanState.UNKNOWN)  # type: ignore[call-overload]


def qos_status_to_proto(status: QosStatus) -> ex.QosStatus:
    message = ex.QosStatus(
        state=_QOS_STATES[status.state],
        loop=status.loop,
        window_seconds=status.window_seconds,
        calibration=status.calibration,
        last_decision=status.last_decision,
    )
    if status.floor_tokens_per_s is not None:
        message.floor_tokens_per_s = status.floor_tokens_per_s
    if status.predicted_tokens_per_s is not None:
        message.predicted_tokens_per_s = status.predicted_tokens_per_s
    if status.measured_tokens_per_s is not None:
        message.measured_tokens_per_s = status.measured_tokens_per_s
    return message


def qos_status_from_proto(message: ex.QosStatus) -> QosStatus:
    """The domain status; state UNKNOWN for UNSPECIFIED or a value this build does not know."""

    def optional(name: str) -> float | None:
        return float(getattr(message, name)) if message.HasField(name) else None

    return QosStatus(
        state=_QOS_STATES_BACK.get(message.state, QosState.UNKNOWN),
        loop=message.loop,
        floor_tokens_per_s=optional("floor_tokens_per_s"),
        predicted_tokens_per_s=optional("predicted_tokens_per_s"),
        measured_tokens_per_s=optional("measured_tokens_per_s"),
        window_seconds=message.window_seconds,
        calibration=message.calibration,
        last_decision=message.last_decision,
    )


def calibration_to_proto(calibration: LiveCalibration) -> ex.LiveCalibration:
    return ex.LiveCalibration(
        fixed_scale=calibration.fixed_scale,
        call_scale=calibration.call_scale,
        steps=calibration.steps,
        window_seconds=calibration.window_seconds,
    )


def calibration_from_proto(message: ex.LiveCalibration) -> LiveCalibration:
    return LiveCalibration(
        fixed_scale=message.fixed_scale,
        call_scale=message.call_scale,
        steps=message.steps,
        window_seconds=message.window_seconds,
    )


def profile_response_to_proto(profile: Profile, calibration: LiveCalibration | None) -> ex.GetProfileResponse:
    """GetProfile's reply: the profile, and the live calibration it is under (None: as measured)."""
    message = ex.GetProfileResponse(profile=common.profile_to_proto(profile))
    if calibration is not None:
        message.calibration.CopyFrom(calibration_to_proto(calibration))
    return message


def profile_response_from_proto(message: ex.GetProfileResponse) -> tuple[Profile, LiveCalibration | None]:
    calibration = calibration_from_proto(message.calibration) if message.HasField("calibration") else None
    return common.profile_from_proto(message.profile), calibration


def info_to_proto(info: ExecutorInfo) -> ex.GetInfoResponse:
    message = ex.GetInfoResponse(
        name=info.name,
        model=common.model_to_proto(info.model),
        hardware=common.hardware_to_proto(info.hardware),
        tiers=[common.tier_status_to_proto(s) for s in info.tiers],
        plan=common.plan_to_proto(info.plan),
        planner_address=info.planner_address,
        active_generations=info.active_generations,
        queued_generations=info.queued_generations,
        profile_cached=info.profile_cached,
        replan_state=replan_state_to_proto(info.replan_state),
        replan_detail=info.replan_detail,
        damaged_files=info.damaged_files,
        integrity=info.integrity,
        standing_pins=[common.pin_to_proto(p) for p in info.standing_pins],
        target_generation=info.target_generation,
        max_batch_size=info.max_batch_size,
        max_queued_generations=info.max_queued_generations,
        max_tokens_in_flight=info.max_tokens_in_flight,
        tokens_in_flight=info.tokens_in_flight,
        dense=[dense_status_to_proto(d) for d in info.dense],
        variants_ahead=info.variants_ahead,
    )
    if info.plan_applied_at is not None:
        message.plan_applied_at.CopyFrom(common.timestamp_to_proto(info.plan_applied_at))
    if info.standing_target is not None:
        message.standing_target.CopyFrom(common.target_to_proto(info.standing_target))
    if info.qos is not None:
        message.qos.CopyFrom(qos_status_to_proto(info.qos))
    if info.last_switch is not None:
        message.last_switch.CopyFrom(common.switch_to_proto(info.last_switch))
    return message


def info_from_proto(message: ex.GetInfoResponse) -> ExecutorInfo:
    return ExecutorInfo(
        name=message.name,
        model=common.model_from_proto(message.model),
        hardware=common.hardware_from_proto(message.hardware),
        tiers=tuple(common.tier_status_from_proto(s) for s in message.tiers),
        plan=common.plan_from_proto(message.plan),
        plan_applied_at=(
            common.timestamp_from_proto(message.plan_applied_at)
            if message.HasField("plan_applied_at")
            else None
        ),
        standing_target=(
            common.target_from_proto(message.standing_target) if message.HasField("standing_target") else None
        ),
        planner_address=message.planner_address,
        active_generations=message.active_generations,
        queued_generations=message.queued_generations,
        profile_cached=message.profile_cached,
        replan_state=replan_state_from_proto(message.replan_state),
        replan_detail=message.replan_detail,
        damaged_files=message.damaged_files,
        integrity=message.integrity or "ok",
        standing_pins=common.pins_from_proto(message.standing_pins),
        target_generation=message.target_generation,
        qos=qos_status_from_proto(message.qos) if message.HasField("qos") else None,
        max_batch_size=message.max_batch_size,
        max_queued_generations=message.max_queued_generations,
        max_tokens_in_flight=message.max_tokens_in_flight,
        tokens_in_flight=message.tokens_in_flight,
        dense=tuple(dense_status_from_proto(d) for d in message.dense),
        variants_ahead=message.variants_ahead,
        last_switch=common.switch_from_proto(message.last_switch)
        if message.HasField("last_switch")
        else None,
    )


def dense_status_to_proto(status: DenseStatus) -> ex.DenseStatus:
    return ex.DenseStatus(
        element=status.element.value,
        precision=common.precision_to_proto(status.precision),
        bytes=status.bytes,
    )


def dense_status_from_proto(message: ex.DenseStatus) -> DenseStatus:
    """One served dense element; InvalidArgument on an unknown element or precision."""
    try:
        element = DenseElement.parse(message.element)
    except ValueError as exc:
        raise InvalidArgument(f"dense status: {exc}") from None
    return DenseStatus(element, common.precision_from_proto(message.precision), message.bytes)


def budget_outcome_to_proto(outcome: BudgetOutcome) -> ex.SetBudgetResponse:
    return ex.SetBudgetResponse(
        plan_fits=outcome.plan_fits,
        replan_started=outcome.replan_started,
        tiers=[common.tier_status_to_proto(s) for s in outcome.tiers],
    )


def budget_outcome_from_proto(message: ex.SetBudgetResponse) -> BudgetOutcome:
    return BudgetOutcome(
        plan_fits=message.plan_fits,
        replan_started=message.replan_started,
        tiers=tuple(common.tier_status_from_proto(s) for s in message.tiers),
    )


# ----- generation ---------------------------------------------------------------------------------
def sampling_to_proto(sampling: Sampling) -> ex.SamplingParams:
    message = ex.SamplingParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        stop=sampling.stop,
    )
    if sampling.top_p is not None:
        message.top_p = sampling.top_p
    if sampling.seed is not None:
        message.seed = sampling.seed
    return message


def chat_message_to_proto(message: ChatMessage) -> ex.ChatMessage:
    return ex.ChatMessage(role=message.role, content=message.content)


def chat_message_from_proto(message: ex.ChatMessage) -> ChatMessage:
    return ChatMessage(role=message.role, content=message.content)


def sampling_from_proto(message: ex.SamplingParams) -> Sampling:
    """The request's sampling (the runtime validates the values against the model)."""
    return Sampling(
        max_tokens=message.max_tokens,
        temperature=message.temperature,
        top_p=message.top_p if message.HasField("top_p") else None,
        top_k=message.top_k,
        seed=message.seed if message.HasField("seed") else None,
        stop=tuple(message.stop),
    )


def stats_to_proto(stats: GenerationStats) -> ex.GenerationStats:
    return ex.GenerationStats(
        prompt_tokens=stats.prompt_tokens,
        generated_tokens=stats.generated_tokens,
        time_to_first_token_s=stats.time_to_first_token_s,
        tokens_per_s=stats.tokens_per_s,
        total_s=stats.total_s,
        finish_reason=stats.finish_reason,
        plan_spec=stats.plan_spec,
    )


def stats_from_proto(message: ex.GenerationStats) -> GenerationStats:
    return GenerationStats(
        prompt_tokens=message.prompt_tokens,
        generated_tokens=message.generated_tokens,
        time_to_first_token_s=message.time_to_first_token_s,
        tokens_per_s=message.tokens_per_s,
        total_s=message.total_s,
        finish_reason=message.finish_reason,
        plan_spec=message.plan_spec,
    )


def event_to_proto(event: GenerationEvent) -> ex.GenerateResponse:
    message = ex.GenerateResponse(text=event.text)
    if event.token_id is not None:
        message.token_id = event.token_id
    if event.stats is not None:
        message.stats.CopyFrom(stats_to_proto(event.stats))
    return message


def event_from_proto(message: ex.GenerateResponse) -> GenerationEvent:
    return GenerationEvent(
        text=message.text,
        token_id=message.token_id if message.HasField("token_id") else None,
        stats=stats_from_proto(message.stats) if message.HasField("stats") else None,
    )


def completion_to_proto(completion: Completion) -> ex.CompleteResponse:
    return ex.CompleteResponse(text=completion.text, stats=stats_to_proto(completion.stats))


def completion_from_proto(message: ex.CompleteResponse) -> Completion:
    return Completion(text=message.text, stats=stats_from_proto(message.stats))


# ----- evaluation and profile measurement ---------------------------------------------------------
def evaluation_to_proto(evaluation: Evaluation) -> ex.EvaluateResponse:
    return ex.EvaluateResponse(
        perplexity=evaluation.perplexity,
        tokens_per_s=evaluation.tokens_per_s,
        tokens=evaluation.tokens,
        plan_spec=evaluation.plan_spec,
        corpus=evaluation.corpus,
        seconds=evaluation.seconds,
        decode_tokens=evaluation.decode_tokens,
    )


def evaluation_from_proto(message: ex.EvaluateResponse) -> Evaluation:
    return Evaluation(
        perplexity=message.perplexity,
        tokens_per_s=message.tokens_per_s,
        tokens=message.tokens,
        plan_spec=message.plan_spec,
        corpus=message.corpus,
        seconds=message.seconds,
        decode_tokens=message.decode_tokens,
    )


def measure_event_to_proto(event: ProfileProgress | Profile) -> ex.MeasureProfileResponse:
    if isinstance(event, Profile):
        return ex.MeasureProfileResponse(profile=common.profile_to_proto(event))
    progress = ex.ProfileProgress(stage=event.stage, done=event.done, total=event.total)
    return ex.MeasureProfileResponse(progress=progress)


def measure_event_from_proto(message: ex.MeasureProfileResponse) -> ProfileProgress | Profile:
    """The progress, or the finished profile (the stream's last event)."""
    if message.HasField("profile"):
        return common.profile_from_proto(message.profile)
    progress = message.progress
    return ProfileProgress(stage=progress.stage, done=progress.done, total=progress.total)
