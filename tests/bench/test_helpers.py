"""The benchmark's pure helpers: errors, traffic bounds, frontier picks, timing, tables, tier plans."""

import argparse
import json
import math

import pytest
from moeqos.bench.metrics import bandwidth_bound, expert_bytes_per_token, knee_index, mape, spread_indices
from moeqos.bench.report import SectionResult, Table, cpu_model, json_ready, table, write_json
from moeqos.bench.runner import add_arguments, command_line, settings_for
from moeqos.bench.settings import FULL, QUICK, SECTIONS, parse_sections
from moeqos.bench.tiers import resident_first_plan
from moeqos.bench.timing import Timing, decode_rate, time_repeats
from moeqos.core.plan import Plan, parse_plan
from moeqos.core.precision import Precision, expert_bytes
from moeqos.core.tier import DISK


def test_mape_is_mean_of_relative_errors():
    assert mape([110.0, 90.0], [100.0, 100.0]) == pytest.approx(10.0)
    assert mape([1.0, 3.0], [2.0, 2.0]) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        mape([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        mape([1.0], [0.0])


def test_expert_bytes_per_token_weights_bytes_by_frequency():
    frequency = ((1.5, 0.5), (1.0, 1.0))  # rows sum to top_k = 2
    plan = parse_plan("int4@cpu,L0.E0=bf16", 2, 2, "cpu")
    sizes = {p: expert_bytes(64, 128, p) for p in Precision}
    expected = 1.5 * sizes[Precision.BF16] + (0.5 + 1.0 + 1.0) * sizes[Precision.INT4]
    assert expert_bytes_per_token(frequency, plan, sizes) == pytest.approx(expected)
    with pytest.raises(ValueError):
        expert_bytes_per_token(((1.0, 1.0, 0.0),), plan, sizes)


def test_bandwidth_bound():
    assert bandwidth_bound(2e6, 1e9) == pytest.approx(500.0)
    with pytest.raises(ValueError):
        bandwidth_bound(0, 1e9)


def test_spread_indices_cover_the_range_and_skip_excluded():
    speeds = [1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 16.5]
    picked = spread_indices(speeds, 3)
    assert picked[0] == 0 and picked[-1] in (5, 6) and len(set(picked)) == 3
    assert 0 not in spread_indices(speeds, 3, exclude={0})
    assert len(spread_indices(speeds, 20)) == len(speeds)
    assert spread_indices(speeds, 0) == []


def test_knee_is_the_bend_of_the_curve():
    speeds = [1.0, 2.0, 4.0, 8.0, 16.0]
    perplexities = [10.0, 10.1, 10.2, 16.0, 20.0]  # flat, then steep: the bend is at 4 tok/s
    assert knee_index(speeds, perplexities) == 2


def test_decode_rate_counts_tokens_after_the_first():
    assert decode_rate(11, 2.0, 4.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        decode_rate(1, 0.0, 1.0)
    with pytest.raises(ValueError):
        decode_rate(5, 2.0, 2.0)


def test_time_repeats_takes_the_median():
    calls = []
    timing = time_repeats(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(timing.samples) == 5
    assert Timing((3.0, 1.0, 100.0)).median == 3.0
    with pytest.raises(ValueError):
        Timing(())


def test_table_renders_aligned_and_json_is_strict(tmp_path):
    t = table("speeds", ["plan", "tok/s"], [["bf16", 12.345678], ["int4", math.nan]], ["a note"])
    text = t.render("machine: x")
    assert "== speeds" in text and "machine: x" in text and "12.35" in text and "a note" in text
    assert isinstance(t, Table) and t.rows[1][1] == "nan"
    path = write_json(tmp_path / "r.json", {"x": math.nan, "nested": [math.inf, 1.0]})
    assert json.loads(path.read_text()) == {"x": None, "nested": [None, 1.0]}
    assert json_ready({1: (2.0,)}) == {"1": [2.0]}


def test_failed_section_renders_its_error():
    result = SectionResult("tiers", error="RuntimeError: boom")
    assert "FAILED" in result.render("h") and result.to_dict()["error"] == "RuntimeError: boom"


def test_parse_sections():
    assert parse_sections(None) == list(SECTIONS)
    assert parse_sections("paper,frontier") == ["frontier", "paper"]
    with pytest.raises(ValueError, match="nope"):
        parse_sections("frontier,nope")


def test_resident_first_plan_keeps_hot_experts_within_budget():
    frequency = ((0.1, 0.9, 0.6, 0.4), (0.5, 0.5, 0.2, 0.8))
    size = expert_bytes(64, 128, Precision.INT4)
    plan = resident_first_plan(frequency, Precision.INT4, size, 3 * size + size // 2, "cpu")
    resident = {key for key, a in plan.items() if a.tier == "cpu"}
    assert resident == {(0, 1), (1, 3), (0, 2)}
    assert all(a.precision == Precision.INT4 for _, a in plan.items())
    full = resident_first_plan(frequency, Precision.INT4, size, 8 * size, "cpu")
    assert full == Plan.uniform(2, 4, Precision.INT4, "cpu")
    assert all(
        a.tier == DISK for _, a in resident_first_plan(frequency, Precision.INT4, size, 0, "cpu").items()
    )


def test_flags_override_settings_and_name_the_command():
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--quick", "--repeats", "5", "--only", "paper"]
    )
    settings = settings_for(args)
    assert settings.repeats == 5 and settings.decode_tokens == QUICK.decode_tokens and settings.quick
    assert (
        command_line("python -m moeqos.bench", args)
        == "python -m moeqos.bench --quick --only paper --repeats=5 --out out/bench"
    )
    assert settings_for(add_arguments(argparse.ArgumentParser()).parse_args([])) == FULL


def test_cpu_model_comes_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t: avx2\n")
    assert cpu_model(cpuinfo) == "Test CPU 9000"
    assert cpu_model(tmp_path / "missing")  # falls back to what platform knows, never empty


def test_a_plans_dense_reads_follow_its_dense_part_and_skip_untied_embeddings():
    from types import SimpleNamespace

    from moeqos.bench.bandwidth import dense_read_bytes
    from moeqos.core.dense import DenseShapes

    def ctx(tied: bool) -> SimpleNamespace:
        shapes = DenseShapes.mixtral(2, 64, 4, 2, 1000, tied=tied)
        model = SimpleNamespace(dense_bytes=10_000_000)
        runtime = SimpleNamespace(dense=SimpleNamespace(shapes=lambda: shapes))
        return SimpleNamespace(
            runtime=runtime, profile=SimpleNamespace(model=model, dense_precision=Precision.BF16)
        )

    plain = parse_plan("int4@cpu", 2, 2, "cpu")
    quantized = parse_plan("int4@cpu,attn=int8,head=int4", 2, 2, "cpu")
    tied, untied = ctx(True), ctx(False)
    assert dense_read_bytes(tied, plain) == 10_000_000
    assert dense_read_bytes(untied, plain) == 10_000_000 - 2 * 1000 * 64  # the embeddings: one row a token
    shapes = tied.runtime.dense.shapes()
    assert dense_read_bytes(tied, quantized) == 10_000_000 + shapes.read_delta(
        quantized.dense, Precision.BF16
    )
    assert dense_read_bytes(tied, quantized) < dense_read_bytes(tied, plain)
