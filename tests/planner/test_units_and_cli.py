"""Sizes with units, and the plan/frontier/whatif commands end to end (in process)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from moeqos.cli import planner_cmds
from moeqos.cli.guard import run_command
from moeqos.core.errors import InvalidArgument
from moeqos.core.precision import Precision
from moeqos.core.units import format_bytes, parse_budget, parse_bytes

from tests.planner.planner_fixtures import synthetic_profile


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24GiB", 24 * 2**30),
        ("80GB", 80 * 10**9),
        ("1.5 MiB", 1572864),
        ("4096B", 4096),
        ("2g", 2 * 2**30),
        ("0", 0),
    ],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_bad_sizes_and_budgets_are_invalid() -> None:
    for bad in ("lots", "12 parsecs", "-1GB", "4096", "70"):
        with pytest.raises(InvalidArgument):
            parse_bytes(bad)
    with pytest.raises(InvalidArgument):
        parse_budget("gpu=1GiB")
    assert parse_budget("cuda:0=16GiB").budget_bytes == 16 * 2**30
    assert format_bytes(3 * 2**30) == "3.00 GiB"


@pytest.fixture()
def profile_file(tmp_path):
    profile = synthetic_profile(
        3, 4, (Precision.BF16, Precision.INT8, Precision.INT4), quality_plans=8, seed=2
    )
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    return path


def main(argv: list[str]) -> int:
    """The planner's commands alone (the full `moeqos` parser also loads other helpers' command groups)."""
    parser = argparse.ArgumentParser(prog="moeqos")
    planner_cmds.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return run_command(args.func, args)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_command_prints_a_table_and_json(profile_file, capsys) -> None:
    code, out, _ = _run(["plan", "--profile", str(profile_file), "--max-ppl-increase", "0.2"], capsys)
    assert code == 0 and "tokens/s" in out and "cuda:0" in out
    code, out, _ = _run(
        [
            "plan",
            "--profile",
            str(profile_file),
            "--min-tps",
            "100",
            "--budget",
            "cuda:0=100KiB",
            "--pin",
            "L0.E*=bf16@cpu",
            "--json",
        ],
        capsys,
    )
    doc = json.loads(out)
    assert code == 0 and doc["bytes_per_tier"].get("cuda:0", 0) <= 100 * 1024
    assert all(a == "bf16@cpu" for a in doc["plan"]["assignments"][0])


def test_plan_command_reports_infeasible_targets_with_the_closest_point(profile_file, capsys) -> None:
    code, out, _ = _run(["plan", "--profile", str(profile_file), "--min-tps", "1e9", "--json"], capsys)
    assert code == 3 and json.loads(out)["closest"]["predicted_tokens_per_s"] > 0
    code, _, err = _run(["plan", "--profile", str(profile_file), "--min-tps", "1e9"], capsys)
    assert code == 3 and "closest feasible" in err and "Traceback" not in err


def test_frontier_command_with_plot(profile_file, tmp_path, capsys) -> None:
    plot = tmp_path / "f.png"
    code, out, _ = _run(
        ["frontier", "--profile", str(profile_file), "--points", "5", "--plot", str(plot), "--json"], capsys
    )
    doc = json.loads(out)
    assert code == 0 and len(doc["points"]) >= 2 and plot.stat().st_size > 0
    code, _, err = _run(["frontier", "--profile", str(profile_file), "--points", "1"], capsys)
    assert code == 2 and "at least 2 points" in err


def test_whatif_command_answers_the_example_question(capsys) -> None:
    code, out, _ = _run(
        [
            "whatif",
            "--model",
            "mixtral-8x7b",
            "--hardware",
            "a100-80gb",
            "--budget",
            "cuda:0=24GiB",
            "--budget",
            "cpu=64GiB",
            "--min-tps",
            "5",
            "--json",
        ],
        capsys,
    )
    doc = json.loads(out)
    assert code == 0 and doc["predicted_tokens_per_s"] >= 5 * (1 - 1e-6) and doc["perplexity_is_estimate"]
    code, _, err = _run(["whatif", "--model", "nope"], capsys)
    assert code == 2 and "unknown model" in err


def test_whatif_with_descriptions_that_do_not_combine_is_a_clear_error(tmp_path, capsys) -> None:
    """Host experts copied over a link of zero bandwidth: exit 2 with a message, not a traceback."""
    from dataclasses import asdict, replace

    from moeqos.planner.catalog import HARDWARE

    hardware = replace(HARDWARE["a100-80gb"], host_compute=False, link_bandwidth_bps=0.0)
    path = tmp_path / "no-link.json"
    path.write_text(json.dumps(asdict(hardware)))
    code, _, err = _run(
        ["whatif", "--model", "mixtral-8x7b", "--hardware", str(path), "--min-tps", "1"], capsys
    )
    assert code == 2 and "do not combine" in err


def test_whatif_paper_prints_the_side_by_side(capsys) -> None:
    code, out, _ = _run(["whatif", "--paper"], capsys)
    assert code == 0 and "0.63" in out and "13.00" in out and "Fast end" in out


def test_planning_never_imports_torch() -> None:
    script = (
        "import sys\n"
        "import argparse\n"
        "from moeqos.cli import planner_cmds\n"
        "parser = argparse.ArgumentParser()\n"
        "planner_cmds.register(parser.add_subparsers())\n"
        "args = parser.parse_args(['whatif', '--model', 'smollm2-135m-moe8', '--min-tps', '20', '--json'])\n"
        "assert args.func(args) == 0\n"
        "import moeqos.planner.solver, moeqos.planner.frontier, moeqos.planner.whatif, moeqos.planner.report, moeqos.planner.paper\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_no_offload_keeps_every_expert_off_the_disk_tier(tmp_path, capsys) -> None:
    profile = synthetic_profile(
        3,
        4,
        (Precision.BF16, Precision.INT4),
        ("cpu", "disk"),
        quality_plans=6,
        seed=4,
        budgets={"cpu": 6 * synthetic_profile().model.expert_bytes(Precision.BF16)},
    )
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    base = ["plan", "--profile", str(path), "--objective", "quality", "--json"]
    code, out, _ = _run(base, capsys)
    assert code == 0 and json.loads(out)["bytes_per_tier"].get("disk", 0) > 0
    assert "--no-offload" in json.loads(out)["notes"]
    code, out, _ = _run([*base, "--no-offload"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["bytes_per_tier"].get("disk", 0) == 0 and "int4" in doc["plan_spec"]
