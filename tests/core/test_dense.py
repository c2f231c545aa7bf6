"""The dense part's byte contract (moeqos.core.dense): element bytes, tied heads, budget deltas."""

import pytest
from moeqos.core.dense import DenseCharge, DenseElement, DenseShapes, dense_precisions
from moeqos.core.precision import Precision, matrix_bytes

# The default model's shape: 30 layers, hidden 576, 9 heads / 3 kv heads of 64, vocab 49152, tied.
SHAPES = DenseShapes.mixtral(30, 576, 9, 3, 49152, tied=True)


def test_element_bytes_follow_the_matrix_contract():
    attn_bf16 = SHAPES.element_bytes(DenseElement.ATTN, Precision.BF16, Precision.BF16)
    assert attn_bf16 == 30 * 2 * 576 * (576 + 192 + 192 + 576)
    int4 = SHAPES.element_bytes(DenseElement.ATTN, Precision.INT4, Precision.BF16)
    assert int4 == 30 * sum(
        matrix_bytes(r, 576, Precision.INT4) for r in (576, 192, 192)
    ) + 30 * matrix_bytes(576, 576, Precision.INT4)
    # a tied head in the dense precision is the embedding matrix: nothing of its own
    assert SHAPES.element_bytes(DenseElement.HEAD, Precision.BF16, Precision.BF16) == 0
    assert SHAPES.element_bytes(DenseElement.HEAD, Precision.INT4, Precision.BF16) == matrix_bytes(
        49152, 576, Precision.INT4
    )


def test_a_token_reads_a_tied_head_in_the_dense_precision_and_the_plans_dense_part_moves_its_reads():
    head_bf16 = 2 * 49152 * 576
    # holds nothing of its own, but a decode token reads the whole embedding matrix through it
    assert SHAPES.read_bytes(DenseElement.HEAD, Precision.BF16) == head_bf16
    attn_bf16 = SHAPES.read_bytes(DenseElement.ATTN, Precision.BF16)
    assert attn_bf16 == SHAPES.element_bytes(DenseElement.ATTN, Precision.BF16, Precision.BF16)
    plan_dense = dense_precisions({DenseElement.ATTN: Precision.INT8, DenseElement.HEAD: Precision.INT4})
    delta = SHAPES.read_delta(plan_dense, Precision.BF16)
    attn_int8 = SHAPES.element_bytes(DenseElement.ATTN, Precision.INT8, Precision.BF16)
    assert delta == attn_int8 - attn_bf16 + matrix_bytes(49152, 576, Precision.INT4) - head_bf16
    assert SHAPES.read_delta((), Precision.BF16) == 0


def test_budget_charge_is_the_delta_over_the_dense_precision_on_the_device():
    charge = DenseCharge(SHAPES, Precision.BF16, "cpu")
    assert charge.bytes_per_tier((), 64) == {}
    table = SHAPES.table(Precision.BF16)
    head = dense_precisions({DenseElement.HEAD: Precision.INT4})
    assert charge.bytes_per_tier(head, 64) == {"cpu": table.bytes[DenseElement.HEAD][Precision.INT4]}
    attn = dense_precisions({DenseElement.ATTN: Precision.INT8})
    saved = table.bytes[DenseElement.ATTN][Precision.BF16] - table.bytes[DenseElement.ATTN][Precision.INT8]
    assert charge.bytes_per_tier(attn, 64) == {"cpu": -saved}
    untied = DenseShapes.mixtral(30, 576, 9, 3, 49152, tied=False).table(Precision.BF16)
    assert untied.delta_bytes(head) < 0  # an untied head gives its bytes back when quantized


def test_the_budget_charge_builds_its_bytes_table_once_per_group_size(monkeypatch):
    charge = DenseCharge(SHAPES, Precision.BF16, "cpu")
    built: list[int] = []
    table = DenseShapes.table

    def counted(shapes: DenseShapes, dense: Precision, group_size: int = 64):
        built.append(group_size)
        return table(shapes, dense, group_size)

    monkeypatch.setattr(DenseShapes, "table", counted)
    head = dense_precisions({DenseElement.HEAD: Precision.INT4})
    first = charge.bytes_per_tier(head, 64)
    assert [charge.bytes_per_tier(head, 64) for _ in range(3)] == [first] * 3
    assert charge.bytes_per_tier(head, 32) != first  # another group size: its own table
    assert built == [64, 32]


def test_dense_precisions_reject_unknown_and_repeated_elements():
    with pytest.raises(ValueError, match="unknown dense element"):
        dense_precisions([("mlp", "int4")])
    with pytest.raises(ValueError, match="twice"):
        dense_precisions([("head", "int4"), ("HEAD", "int8")])
