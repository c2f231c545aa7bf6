"""Property-based fuzzing of the live planner and executor (in-process servers on port 0, tiny model).

Each property sends malformed and extreme requests; every answer must be a clear status (never
INTERNAL or UNKNOWN) and the servers must stay SERVING with their state untouched (see fuzz_harness).
Examples per property: MOEQOS_FUZZ_EXAMPLES (default 300); the inputs are the same every run unless
MOEQOS_FUZZ_RANDOM=1. The counts of inputs tried, by method and answer, are printed at the end.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from moeqos.api.codec import common
from moeqos.api.codec import planner as planner_codec
from moeqos.client import ExecutorClient
from moeqos.planner.catalog import MODELS
from moeqos.proto.common.v1 import common_pb2 as pb
from moeqos.proto.executor.v1 import executor_pb2 as ex
from moeqos.proto.planner.v1 import planner_pb2 as pl

from tests.reliability import fuzz_inputs as fi
from tests.reliability.fuzz_harness import EXECUTOR, PLANNER, Fuzzer, serialized
from tests.service.service_harness import Stack, address

EXAMPLES = int(os.environ.get("MOEQOS_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("MOEQOS_FUZZ_RANDOM") != "1",  # CI sees the same inputs every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
MAX_MESSAGE = 1 << 20
"""The servers' message limit here, so an oversized request is cheap to build."""
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
"""Also clear for requests that name an executor nobody listens at."""
VALID_CORPORA = ("", "ptb:train", "ptb:valid", "ptb:test")


@pytest.fixture(scope="module")
def fuzzer(stack: Stack, profile_file: Path) -> Iterator[Fuzzer]:
    executor = stack.executor(tier_budgets={"cpu": 600_000, "disk": 0}, max_message_bytes=MAX_MESSAGE)
    planner = stack.planner(max_message_bytes=MAX_MESSAGE)
    with ExecutorClient(address(executor.port)) as client:
        client.get_profile()
    fuzz = Fuzzer(address(executor.port), address(planner.port), baseline=None)  # type: ignore[arg-type]
    fuzz.baseline = fuzz.state()
    yield fuzz
    fuzz.close()
    stack.bg.run(executor.stop(0.5))
    stack.bg.run(planner.stop(0.5))


@pytest.fixture(autouse=True)
def _from_baseline(fuzzer: Fuzzer) -> None:
    """Each test starts from the baseline state, whatever a failed test before it left."""
    if fuzzer.state() != fuzzer.baseline:
        fuzzer.restore()


def _cheap_measurement(corpus: str, tokens: int) -> bool:
    """Whether a measurement request would be valid (and so cost seconds of compute)."""
    return corpus in VALID_CORPORA and (tokens == 0 or 16 <= tokens <= 65536)


@FUZZ
@given(plan=fi.plans(), evaluate=st.booleans(), corpus=fi.text, tokens=fi.u32)
def test_plans(fuzzer, plan, evaluate, corpus, tokens):
    if evaluate:
        assume(not _cheap_measurement(corpus, tokens))
        request = ex.EvaluateRequest(corpus=corpus, max_tokens=tokens, plan=plan)
        fuzzer.check(EXECUTOR, "Evaluate", serialized(request))
    else:
        fuzzer.check(EXECUTOR, "ApplyPlan", serialized(ex.ApplyPlanRequest(plan=plan)))


@FUZZ
@given(tier=fi.text, budget=fi.u64, target=fi.targets() | st.none(), planner=fi.text)
def test_budgets_and_targets(fuzzer, tier, budget, target, planner):
    fuzzer.check(EXECUTOR, "SetBudget", serialized(ex.SetBudgetRequest(tier=tier, budget_bytes=budget)))
    request = ex.SetTargetRequest(planner_address=planner)
    if target is not None:
        request.target.CopyFrom(target)
    fuzzer.check(EXECUTOR, "SetTarget", serialized(request))


@FUZZ
@given(request=fi.generate_requests, stream=st.booleans())
def test_generation(fuzzer, request, stream):
    fuzzer.check(EXECUTOR, "Generate" if stream else "Complete", serialized(request))


@FUZZ
@given(corpus=fi.text, tokens=fi.u32, quality=st.booleans())
def test_measurement(fuzzer, corpus, tokens, quality):
    assume(not _cheap_measurement(corpus, tokens))
    request = ex.MeasureProfileRequest(corpus=corpus, tokens=tokens, measure_quality=quality)
    fuzzer.check(EXECUTOR, "MeasureProfile", serialized(request))


@FUZZ
@given(data=st.data(), target=fi.targets(), budgets=fi.budgets, pins=fi.pins, points=fi.u32)
def test_planning(fuzzer, data, target, budgets, pins, points):
    source, also = _source(fuzzer, data)
    plan = pl.PlanRequest(source=source, target=target, budgets=budgets, pins=pins)
    fuzzer.check(PLANNER, "Plan", serialized(plan), also)
    assume(points == 0 or points > 200 or not budgets)  # a valid frontier is many solves: keep it rare
    frontier = pl.FrontierRequest(source=source, budgets=budgets, pins=pins, points=points)
    fuzzer.check(PLANNER, "Frontier", serialized(frontier), also)


def _source(fuzzer: Fuzzer, data: st.DataObject) -> tuple[pl.ProfileSource, frozenset[grpc.StatusCode]]:
    kind = data.draw(st.sampled_from(["executor", "address", "profile"]))
    if kind == "executor":
        return pl.ProfileSource(executor_address=fuzzer.executor_address), frozenset()
    if kind == "address":
        bad = data.draw(st.sampled_from(["", "127.0.0.1:1", "nowhere", "[::1]:0", ":", "a" * 300]))
        return pl.ProfileSource(executor_address=bad), fi_unreachable(bad)
    with ExecutorClient(fuzzer.executor_address) as client:
        good = common.profile_to_proto(client.get_profile())
    return pl.ProfileSource(profile=data.draw(fi.profiles(good))), frozenset()


def fi_unreachable(bad: str) -> frozenset[grpc.StatusCode]:
    return UNREACHABLE if bad else frozenset()


@FUZZ
@given(
    model=fi.model_descriptions() | st.sampled_from(["", "mixtral-8x7b", "nope", "../../etc/passwd"]),
    hardware=fi.hardware_descriptions() | st.sampled_from(["", "cpu-2core", "/etc/passwd", "a100-80gb "]),
    target=fi.targets() | st.none(),
    budgets=fi.budgets,
    points=st.sampled_from([0, 1, 2, 201, fi.U32]),
)
def test_whatif(fuzzer, model, hardware, target, budgets, points):
    request = pl.WhatIfRequest(budgets=budgets, frontier_points=points)
    if isinstance(model, str):
        request.model_name = model
    else:
        request.model_description.CopyFrom(model)
    if isinstance(hardware, str):
        request.hardware_name = hardware
    else:
        request.hardware_description.CopyFrom(hardware)
    if target is not None:
        request.target.CopyFrom(target)
    fuzzer.check(PLANNER, "WhatIf", serialized(request))


@FUZZ
@given(data=st.data(), count=st.sampled_from([1, 1, 2, 0, 3]), planner=st.just("") | fi.text)
def test_deploy(fuzzer, data, count, planner):
    addresses = [fuzzer.executor_address, fuzzer.executor_address, "127.0.0.1:1", "", "nowhere:1"]
    targets = [
        pl.DeployTarget(
            executor_address=data.draw(st.sampled_from(addresses)),
            target=data.draw(fi.targets()),
            budgets=data.draw(st.just([]) | fi.budgets),
            pins=data.draw(st.just([]) | fi.pins),
        )
        for _ in range(count)
    ]
    request = pl.DeployRequest(targets=targets, planner_address=planner)
    fuzzer.check(PLANNER, "Deploy", serialized(request), UNREACHABLE)


EXECUTOR_METHODS = (
    "GetInfo",
    "GetProfile",
    "ApplyPlan",
    "SetBudget",
    "SetTarget",
    "Generate",
    "Complete",
    "Evaluate",
)
PLANNER_METHODS = ("Plan", "Frontier", "WhatIf", "Deploy")
STRING_FIELDS = {"SetBudget": 1, "Generate": 1, "Complete": 1, "Evaluate": 1, "WhatIf": 1}
"""A `string` field number of each request that has one at the top level."""


@FUZZ
@given(data=st.data())
def test_raw_bytes(fuzzer, data):
    service, method = data.draw(
        st.sampled_from([(EXECUTOR, m) for m in EXECUTOR_METHODS] + [(PLANNER, m) for m in PLANNER_METHODS])
    )
    payload = data.draw(fi.garbage)
    if method in STRING_FIELDS and data.draw(st.booleans()):
        payload = data.draw(fi.invalid_utf8(STRING_FIELDS[method]))
    fuzzer.check(service, method, payload, UNREACHABLE if service == PLANNER else frozenset())


def test_oversized_messages_are_refused(fuzzer):
    prompt = "x" * (MAX_MESSAGE + 1024)
    request = ex.GenerateRequest(prompt=prompt, sampling=ex.SamplingParams(max_tokens=1))
    assert fuzzer.check(EXECUTOR, "Complete", serialized(request)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    big = pl.WhatIfRequest(model_name="m" * (MAX_MESSAGE + 1024), hardware_name="cpu-2core")
    assert fuzzer.check(PLANNER, "WhatIf", serialized(big)) == grpc.StatusCode.RESOURCE_EXHAUSTED


# ----- the fuzzer's findings, pinned as plain regression tests -----------------------------------
def test_deploy_with_one_bad_target_changes_no_executor(fuzzer):
    """Found by test_deploy: a Deploy refused for one target's input must not have deployed the others."""
    good = pl.DeployTarget(
        executor_address=fuzzer.executor_address, target=pb.QosTarget(objective=pb.OBJECTIVE_SPEED)
    )
    bad = pl.DeployTarget(executor_address="127.0.0.1:1", target=pb.QosTarget(max_perplexity=math.nan))
    request = pl.DeployRequest(targets=[good, bad])
    assert fuzzer.check(PLANNER, "Deploy", serialized(request)) == grpc.StatusCode.INVALID_ARGUMENT
    time.sleep(3.0)  # the good target's deploy would have applied its plan by now
    assert fuzzer.state() == fuzzer.baseline


def test_profile_with_too_few_tokens_is_out_of_range(fuzzer):
    """Found by test_measurement: `tokens` 1..15 reached a config check and answered INTERNAL."""
    code = fuzzer.check(EXECUTOR, "MeasureProfile", serialized(ex.MeasureProfileRequest(tokens=1)))
    assert code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.INVALID_ARGUMENT)


def test_tiny_temperature_is_a_clear_answer(fuzzer):
    """Found by test_generation: temperature 1e-300 overflowed the logits into NaN probabilities."""
    sampling = ex.SamplingParams(max_tokens=2, temperature=1e-300)
    fuzzer.check(EXECUTOR, "Complete", serialized(ex.GenerateRequest(prompt="hello", sampling=sampling)))


def test_whatif_with_a_huge_hidden_size_is_a_clear_answer(fuzzer):
    """Found by test_whatif: hidden_size 10**9 made the dense bytes overflow uint64 on the way out."""
    model = planner_codec.model_to_proto(replace(MODELS["mixtral-8x22b"], hidden_size=10**9))
    request = pl.WhatIfRequest(model_description=model, hardware_name="a100-80gb")
    fuzzer.check(PLANNER, "WhatIf", serialized(request))
