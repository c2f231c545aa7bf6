"""The client commands (`moeqos generate|deploy|status|apply|set-budget|profile`) against real servers,
through `moeqos.cli.main.main` with `--json`."""

from __future__ import annotations

import json

import pytest
from moeqos.cli.main import main

from tests.service.service_harness import address


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_generate_prints_json_lines(capsys, executor_address):
    code, out = _run(
        capsys, "generate", "--executor", executor_address, "--max-tokens", "5", "--json", "hello"
    )
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 6
    assert lines[-1]["stats"]["generated_tokens"] == 5 and lines[-1]["token_id"] is None


def test_deploy_status_apply_and_set_budget(capsys, stack, planner_address):
    handle = stack.executor(tier_budgets={"cpu": 1 << 20, "disk": 0})
    target = address(handle.port)
    code, out = _run(
        capsys, "deploy", "--planner", planner_address, "--executor", target, "--min-tps", "0.001", "--json"
    )
    [deployed] = json.loads(out)
    assert code == 0 and deployed["executor"] == target
    code, out = _run(capsys, "status", "--executor", target, "--json")
    [status] = json.loads(out)
    assert status["plan"] == deployed["plan"] and status["standing_target"]["min_tokens_per_s"] == 0.001
    code, out = _run(capsys, "apply", "--executor", target, "--plan", "int8@cpu,L0.E0=int4", "--json")
    assert code == 0 and json.loads(out)["experts_changed"] >= 1
    code, out = _run(capsys, "set-budget", "--executor", target, "cpu=2MiB", "--json")
    assert code == 0 and {t["name"]: t["budget_bytes"] for t in json.loads(out)["tiers"]}["cpu"] == 2 << 20


def test_errors_are_reported_not_raised(capsys, executor_address, planner_address):
    code, out = _run(capsys, "apply", "--executor", executor_address, "--plan", "fp32@cpu", "--json")
    assert code == 1 and json.loads(out)["type"] == "OverBudget"
    code, out = _run(
        capsys,
        "deploy",
        "--planner",
        planner_address,
        "--executor",
        executor_address,
        "--min-tps",
        "1e12",
        "--json",
    )
    assert code == 3 and json.loads(out)["closest"]
    with pytest.raises(SystemExit):
        main(["deploy", "--min-tps", "1"])


def test_plan_and_frontier_from_a_running_executors_profile(capsys, executor_address):
    code, out = _run(capsys, "plan", "--executor", executor_address, "--min-tps", "0.001", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["plan"]["num_layers"] >= 1
    code, out = _run(capsys, "frontier", "--executor", executor_address, "--points", "3", "--json")
    assert code == 0 and json.loads(out)


def test_plan_from_an_unreachable_executor_is_a_clear_error(capsys):
    code, out = _run(
        capsys, "plan", "--executor", "127.0.0.1:1", "--min-tps", "1", "--timeout", "2", "--json"
    )
    error = json.loads(out)["error"]
    assert code == 1 and error.startswith("Unavailable:") and "127.0.0.1:1" in error


def test_apply_with_an_unreadable_plan_file_is_a_clear_error(capsys, executor_address, tmp_path):
    code = main(["apply", "--executor", executor_address, "--plan", f"@{tmp_path / 'missing.json'}"])
    assert code == 2 and "cannot read the plan file" in capsys.readouterr().err  # input error (exit 2)


def test_profile_with_json_prints_a_line_per_progress_event_then_where_the_profile_went(
    capsys, stack, tmp_path
):
    target = address(stack.executor().port)
    out_file = tmp_path / "profile.json"
    code, out = _run(capsys, "profile", "--executor", target, "--json", "--out", str(out_file))
    lines = [json.loads(line) for line in out.splitlines()]
    progress, last = lines[:-1], lines[-1]
    assert code == 0 and last == {"profile": str(out_file)}
    assert len(progress) > 3 and {"frequency", "call_costs"} <= {p["stage"] for p in progress}
    assert all(0 <= p["done"] <= max(p["total"], p["done"]) for p in progress)
    assert json.loads(out_file.read_text())["model"]


def test_profile_without_json_shows_a_bar_per_stage_on_stderr(capsys, stack, tmp_path):
    out_file = tmp_path / "profile.json"
    code = main(["profile", "--executor", address(stack.executor().port), "--out", str(out_file)])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == f"profile written to {out_file}"
    assert all(f"{stage}:" in captured.err for stage in ("frequency", "call_costs"))
    assert json.loads(out_file.read_text())["model"]
