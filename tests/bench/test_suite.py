"""The whole benchmark suite, for real, on a tiny random Mixtral with `--quick` (seconds), and on the
default model (slow)."""

import json
import math

import pytest
from moeqos.bench.runner import main
from moeqos.bench.settings import QUICK, SECTIONS
from moeqos.cli.main import main as moeqos_main
from moeqos.core.profile import Profile


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from moeqos.executor.testing import make_tiny_mixtral

    return make_tiny_mixtral(tmp_path_factory.mktemp("bench") / "tiny")


def _finite_positive(value):
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_quick_suite_on_a_tiny_model(tiny_model, tmp_path, capsys):
    status = main(["--model", str(tiny_model), "--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    document = json.loads((tmp_path / "results.json").read_text())
    sections = document["sections"]
    assert list(sections) == list(SECTIONS)
    assert {name: s["error"] for name, s in sections.items()} == dict.fromkeys(SECTIONS)
    assert status == 0
    assert document["machine"]["cpus"] >= 1 and "--quick" in document["command"]
    frontier = sections["frontier"]["data"]
    fitting = {q["plan_spec"] for q in frontier["profile"]["quality_points"]}
    candidates = {r["plan_spec"] for r in frontier["frontier"] + frontier["dial"]} - fitting
    held_out = frontier["held_out"]
    assert len(held_out) == min(QUICK.measured_plans, len(candidates))  # a random model's frontier is short
    assert {p["spec"] for p in held_out} <= candidates
    measured = held_out + frontier["ends"]
    assert frontier["ends"] and all(_finite_positive(p["measured_tokens_per_s"]) for p in measured)
    assert all(_finite_positive(p["live_predicted_tokens_per_s"]) for p in measured)
    by_spec = {p["spec"]: p for p in held_out}
    for end in frontier["ends"]:  # an end that was held out is that measurement, not a second one
        if end["spec"] in by_spec:
            assert {**end, "source": ""} == {**by_spec[end["spec"]], "source": ""}
    assert all(p["measured_perplexity"] > 1 for p in measured)
    baseline = sections["baseline"]["data"]
    assert _finite_positive(baseline["transformers_fp32"]["tokens_per_s"])
    assert _finite_positive(baseline["knee"]["ratio"])
    bandwidth = sections["bandwidth"]["data"]
    assert all(_finite_positive(p["fraction_of_bound"]) for p in bandwidth["plans"])
    assert [p["plan"] for p in bandwidth["plans"]][-1] == "fastest"
    assert [g["name"] for g in sections["bandwidth"]["goals"]] == [
        "fastest plan's fraction of the bytes bound"
    ]
    breakdown = sections["breakdown"]["data"]["plans"]
    assert [p["plan"] for p in breakdown] == ["all-bf16", "all-int8", "all-int4"]
    assert all(p["parts_seconds"]["experts"] > 0 for p in breakdown)
    budgets = sections["tiers"]["data"]["budgets"]
    assert [b["experts_on_disk"] for b in budgets] == sorted(b["experts_on_disk"] for b in budgets)
    assert budgets[-1]["experts_on_disk"] > 0 and budgets[-1]["hit_rate"] is not None
    offload = sections["offload"]["data"]
    assert offload["disk_reads"] == "uncached" and offload["measured"][0]["role"] == "full precision"
    # The RAM budget (25% of the bf16 experts) holds 7 of the 8 experts even in the smallest allowed
    # precision, so every plan the planner makes under it, whatever the measured costs, puts some on disk.
    assert all(p["bytes_per_tier"]["cpu"] <= offload["cpu_budget_bytes"] for p in offload["frontier"])
    assert all(p["bytes_per_tier"]["disk"] > 0 for p in offload["frontier"])
    assert all(p["experts_on_disk"] > 0 for p in offload["measured"])
    # Full precision: RAM holds 2 of the 8 bf16 experts, so some layer keeps at most one of its 4 in RAM
    # and every token's top-2 there calls a disk expert: the pool's hit rate is measured. Which experts a
    # frontier plan puts on disk depends on measured costs; if a short decode never routes to them, no
    # disk call happens and there is no hit rate to measure.
    full = offload["measured"][0]
    assert full["experts_on_disk"] >= 6 and full["measured_hit_rate"] is not None
    assert all(
        0 <= p["measured_hit_rate"] <= 1 for p in offload["measured"] if p["measured_hit_rate"] is not None
    )
    assert all(_finite_positive(p["measured_tokens_per_s"]) for p in offload["measured"])
    assert len(sections["planner"]["data"]["switches"]) == 4
    spans = sections["paper"]["data"]["spans"]
    assert len(spans) == 4  # the paper's row, then three what-if scenarios computed here
    assert all(s["frontier"] and s["max_tokens_per_s"] > s["min_tokens_per_s"] for s in spans[1:])
    quality = sections["quality"]["data"]
    assert [p["kind"] for p in quality["plans"]].count("random") == 3 * 5  # 5 seeds at 25/50/75%
    assert all(p["perplexity"] > 1 for p in quality["plans"])
    assert quality["times"]["new_cpu_s"] > 0 and quality["layer_kl"]["int4"]
    assert quality["profile_tokens"]["calibration"] <= QUICK.calibration_tokens  # --quick bounds them
    assert quality["profile_tokens"]["quality"] <= QUICK.fit_tokens
    # the product's path (the profile as measured, not refitted) is measured and judged at every share
    assert [p["share"] for p in quality["plans"] if p["kind"] == "product planner"] == [0.25, 0.5, 0.75]
    goals = [g["name"] for g in sections["quality"]["goals"]]
    assert sum(name.endswith("product planner vs mean random") for name in goals) == 3
    # the refitted profile is written for replays, its layers measured alone on the eval tokens
    refit = Profile.from_json((tmp_path / "quality-fit-profile.json").read_text())
    assert len(refit.layer_alone) == len(refit.layer_alone_error) == len(refit.frequency)
    assert refit.alone_tokens > 0
    assert {q.corpus for q in refit.quality_points} == {"ptb:test"}
    for section in sections.values():
        assert all((tmp_path / p.rsplit("/", 1)[-1]).is_file() for p in section["plots"])
    assert out.count("machine: ") >= len(SECTIONS) and "== frontier: held-out plans" in out


def test_cli_runs_one_section_and_prints_json(tiny_model, tmp_path, capsys):
    status = moeqos_main(
        ["bench", "--model", str(tiny_model), "--quick", "--only", "paper", "--out", str(tmp_path), "--json"]
    )
    document = json.loads(capsys.readouterr().out)
    assert status == 0 and list(document["sections"]) == ["paper"]
    assert document["command"].startswith("moeqos ")


def test_unknown_section_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--only", "frontier,speed", "--out", str(tmp_path)])
    assert "unknown section(s) speed" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three profiles (frontier, quality without and with the layer KL), on a CPU
def test_quick_suite_on_the_default_model(tmp_path, capsys):
    status = main(["--quick", "--out", str(tmp_path)])
    document = json.loads((tmp_path / "results.json").read_text())
    sections = document["sections"]
    assert {name: s["error"] for name, s in sections.items()} == dict.fromkeys(SECTIONS)
    assert status == 0
    assert len(sections["frontier"]["data"]["held_out"]) == QUICK.measured_plans
    assert (
        1 < sections["frontier"]["data"]["full_precision"]["perplexity"] < 1000
    )  # a trained model, not noise
    offload = sections["offload"]["data"]["measured"]
    assert [p["role"] for p in offload] == ["full precision"] + ["frontier"] * QUICK.measured_plans
    assert all(
        p["experts_on_disk"] > 0 and p["measured_hit_rate"] is not None for p in offload
    )  # RAM too small


def test_disk_load_benchmark_compares_both_read_modes(tiny_model, capsys):
    from moeqos.bench import disk_loads

    assert disk_loads.main(["--model", str(tiny_model), "--experts", "2"]) == 0
    rows = [
        line.split()
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("cached", "uncached"))
    ]
    assert [(r[0], r[1]) for r in rows] == [
        (m, p) for m in ("cached", "uncached") for p in ("bf16", "int8", "int4")
    ]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
