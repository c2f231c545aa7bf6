"""Hypothesis strategies of malformed and extreme requests, as pb2 messages or raw bytes.

Numbers mix the extremes (NaN, infinities, negatives, 0, 2**64 - 1) with a few plausible values, so some
requests are valid: the fuzzer restores the servers' state after those (see test_fuzz).
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st
from moeqos.api.codec import planner as planner_codec
from moeqos.planner.catalog import HARDWARE, MODELS
from moeqos.proto.common.v1 import common_pb2 as pb
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.planner.v1 import planner_pb2 as pl

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1

floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-300, 0.5, 1.0, 1.5, 30.0, 1e300])
u32 = st.sampled_from([0, 1, 2, 3, 4, 5, 64, 1000, 65537, 10**9, U32]) | st.integers(0, U32)
u64 = st.sampled_from([0, 1, 1000, 600_000, 1 << 40, U64]) | st.integers(0, U64)
words = st.sampled_from(
    ["", "cpu", "disk", "cuda:0", "gpu", "CPU", "cpu ", "disk\x00", "ptb:test", "text:/etc/passwd"]
)
text = words | st.text(max_size=40)
precision = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 99, -1, 2**31 - 1])
"""Known and unknown enum values (proto3 enums are open: unknown numbers arrive as themselves)."""


@st.composite
def plans(draw: st.DrawFn) -> pb.Plan:
    """Plans of any shape: counts that match or not, unknown precisions, odd tiers and group sizes."""
    layers = draw(st.sampled_from([2, 2, 2, 0, 1, 3, 10**6, U32]))  # the tiny model is 2 x 4
    experts = draw(st.sampled_from([4, 4, 4, 0, 1, 5, U32]))
    count = layers * experts if layers * experts <= 16 and draw(st.booleans()) else draw(st.integers(0, 12))
    assignment = st.builds(pb.Assignment, precision=precision, tier=text)
    return pb.Plan(
        num_layers=layers,
        num_experts=experts,
        group_size=draw(st.sampled_from([0, 1, 3, 32, 64, 128, 1 << 20, U32])),
        assignments=draw(st.lists(assignment, min_size=count, max_size=count)),
    )


@st.composite
def targets(draw: st.DrawFn) -> pb.QosTarget:
    objective: Any = draw(st.sampled_from([0, 1, 2, 0, 1, 2, 3, -1]))  # 3 and -1 are unknown values
    message = pb.QosTarget(objective=objective)
    for name in ("min_tokens_per_s", "max_perplexity", "max_perplexity_increase"):
        if draw(st.booleans()):
            setattr(message, name, draw(floats))
    return message


budgets: st.SearchStrategy[list[pb.TierBudget]] = st.just([]) | st.lists(
    st.builds(pb.TierBudget, name=text, budget_bytes=u64), max_size=3
)
pins: st.SearchStrategy[list[pb.Pin]] = st.just([]) | st.lists(
    st.builds(
        pb.Pin,
        pattern=st.sampled_from(["L*.E*", "L0.E0", "L9.E9", "L1-0.E*", "x", ""]) | text,
        precision=precision,
        tier=text,
    ),
    max_size=3,
)


@st.composite
def sampling(draw: st.DrawFn) -> ex.SamplingParams:
    """Sampling with extreme values; valid ones ask for at most 3 tokens, so valid requests stay cheap."""
    message = ex.SamplingParams(
        max_tokens=draw(st.sampled_from([0, 1, 2, 3, 1025, 10**9, U32])),
        temperature=draw(floats),
        top_k=draw(u32),
        stop=draw(st.lists(text, max_size=3)),
    )
    if draw(st.booleans()):
        message.top_p = draw(floats)
    if draw(st.booleans()):
        message.seed = draw(u64)
    return message


prompts = (
    text
    | st.sampled_from(["the quick brown fox " * 400, "\x00" * 10, "🦊" * 100, "a" * 100_000])
    | st.text(min_size=1, max_size=200)
)
generate_requests = st.builds(ex.GenerateRequest, prompt=prompts, sampling=sampling())


def invalid_utf8(field: int) -> st.SearchStrategy[bytes]:
    """A message whose string field number `field` holds bytes that are not UTF-8."""
    bad = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xfe\xff", b"\xf8\x88\x80\x80\x80"])
    return bad.map(lambda raw: bytes([field << 3 | 2, len(raw)]) + raw)


garbage = st.binary(max_size=64) | st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x08", b"\xff" * 10])
"""Bytes that are rarely a valid message: truncated varints, wrong wire types, lengths past the end."""


@st.composite
def profiles(draw: st.DrawFn, good: pb.Profile) -> pb.Profile:
    """A real profile with one part broken: shape, a number, a grid row, a cost."""
    message = pb.Profile()
    message.CopyFrom(good)
    part = draw(st.sampled_from(["layers", "experts", "frequency", "cost", "error", "tiers", "fixed"]))
    if part == "layers":
        message.model.num_layers = draw(st.sampled_from([0, 3, 10**6, U32]))
    elif part == "experts":
        message.model.num_experts = draw(st.sampled_from([0, 1, 5, U32]))
    elif part == "frequency":
        message.frequency.rows[draw(st.integers(0, len(message.frequency.rows) - 1))].values[0] = draw(floats)
    elif part == "cost" and message.call_costs:
        message.call_costs[0].seconds = draw(floats)
    elif part == "error" and message.quant_error:
        message.quant_error[0].error.rows.pop()
    elif part == "tiers":
        message.tiers.add(name=draw(text), budget_bytes=draw(u64))
    else:
        message.fixed_seconds = draw(floats)
    return message


@st.composite
def model_descriptions(draw: st.DrawFn) -> pl.ModelDescription:
    """A real model description with one or two fields made extreme (NaN, zero, 2**32 - 1, ...).

    Layer and expert counts stay within what a real planner can tabulate (see test_resource_limits)."""
    message = planner_codec.model_to_proto(MODELS[draw(st.sampled_from(sorted(MODELS)))])
    for name in draw(st.lists(st.sampled_from(MODEL_FIELDS), min_size=1, max_size=2)):
        if name == "reference_perplexity":
            message.reference_perplexity = draw(floats)
        elif name in ("num_layers", "num_experts"):
            setattr(message, name, draw(st.sampled_from([0, 1, 2, 16])))
        else:
            setattr(message, name, draw(u32))
    return message


MODEL_FIELDS = (*planner_codec.POSITIVE_MODEL_FIELDS, "reference_perplexity")


@st.composite
def hardware_descriptions(draw: st.DrawFn) -> pl.HardwareDescription:
    """A real machine description with one part broken: a tier, a rate, an optional number, the device."""
    message = planner_codec.hardware_to_proto(HARDWARE[draw(st.sampled_from(sorted(HARDWARE)))])
    part = draw(st.sampled_from(["tier", "flops", "optional", "device", "extra tier"]))
    if part == "tier":
        tier = message.tiers[draw(st.integers(0, len(message.tiers) - 1))]
        tier.capacity_bytes, tier.bandwidth_bps = draw(u64), draw(floats)
    elif part == "flops":
        message.device_flops, message.host_flops = draw(floats), draw(floats)
    elif part == "optional":
        message.disk_latency_s, message.layer_overhead_s = draw(floats), draw(floats)
        message.disk_pool_slots = draw(u32)
    elif part == "device":
        message.device = draw(words)
    else:
        message.tiers.add(name=draw(text), capacity_bytes=draw(u64), bandwidth_bps=draw(floats))
    return message
