"""The dense part of a plan through a real executor over gRPC: ApplyPlan by spec with `attn=`/`head=`
rules, GetInfo showing the served dense precisions and bytes, and a dense part over budget refused
with RESOURCE_EXHAUSTED, changing nothing."""

from __future__ import annotations

import pytest
from moeqos.client import ExecutorClient
from moeqos.core.dense import DenseElement
from moeqos.core.errors import OverBudget
from moeqos.core.plan import parse_plan
from moeqos.core.precision import Precision, matrix_bytes

from tests.service.service_harness import address


@pytest.fixture
def own_executor(stack):
    """A fresh executor of its own (these tests switch its plan); bf16 dense weights."""
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0})
    return address(handle.port)


def test_get_info_shows_the_dense_part_a_plan_switch_applied(own_executor):
    with ExecutorClient(own_executor) as client:
        before = client.info()
        assert before.plan.dense == ()
        assert {d.element: d.precision for d in before.dense} == dict.fromkeys(DenseElement, Precision.BF16)
        plan = parse_plan("bf16@cpu,head=int4,attn=int8", 2, 4, "cpu")
        report = client.apply_plan(plan)
        after = client.info()
    assert report.experts_changed == 0  # only the dense part changed
    assert after.plan == plan and after.plan.to_spec() == "bf16@cpu,attn=int8,head=int4"
    served = {d.element: d for d in after.dense}
    assert served[DenseElement.HEAD].precision == Precision.INT4
    assert served[DenseElement.ATTN].precision == Precision.INT8
    vocab, hidden = before.model.vocab_size, before.model.hidden_size
    assert served[DenseElement.HEAD].bytes == matrix_bytes(vocab, hidden, Precision.INT4)
    used = {t.name: t.used_bytes for t in after.tiers}["cpu"]
    old = {t.name: t.used_bytes for t in before.tiers}["cpu"]
    saved = sum(d.bytes for d in before.dense) - sum(d.bytes for d in after.dense)
    assert used == old - saved  # the device tier's use follows the dense part


def test_a_dense_part_over_budget_is_resource_exhausted_and_changes_nothing(own_executor):
    with ExecutorClient(own_executor) as client:
        before = client.info()
        used = {t.name: t.used_bytes for t in before.tiers}["cpu"]
        assert client.set_budget("cpu", used).plan_fits  # the experts fill the budget exactly
        with pytest.raises(OverBudget, match="cpu needs"):
            client.apply_plan(before.plan.with_dense(((DenseElement.ATTN, Precision.FP32),)))  # grows
        after = client.info()
    assert after.plan == before.plan and after.dense == before.dense


def test_the_cli_applies_a_dense_part_and_status_shows_it(capsys, own_executor):
    import json

    from moeqos.cli.main import main

    assert main(["apply", "--executor", own_executor, "--plan", "bf16@cpu,head=int4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experts_changed"] == 0
    assert main(["status", "--executor", own_executor, "--json"]) == 0
    [status] = json.loads(capsys.readouterr().out)
    assert status["plan"] == "bf16@cpu,head=int4"
    assert {d["element"]: d["precision"] for d in status["dense"]} == {"attn": "bf16", "head": "int4"}
