"""`moeqos model tiny` and `moeqos model info` for every family, through `moeqos.cli.main.main`: the
tiny checkpoint is served by the family's adapter, info describes it, and bad input exits 2 with a
message, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from moeqos.cli.main import main
from moeqos.cli.model_cmds import TINY_FAMILIES
from moeqos.executor.tiny_families import family_names

SHAPES = {  # (MoE layers, routed experts, shared slices, top-k) of each tiny checkpoint
    "deepseek_v3": ([1, 2], 8, 1, 2),
    "granitemoe": ([0, 1], 8, 0, 2),
    "mixtral": ([0, 1], 4, 0, 2),
    "olmoe": ([0, 1], 8, 0, 2),
    "qwen2_moe": ([0, 1], 8, 2, 2),
    "qwen3_moe": ([0, 1], 16, 0, 4),
}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def test_the_help_lists_every_family_tiny_writes() -> None:
    assert list(TINY_FAMILIES) == family_names() == sorted(SHAPES)


@pytest.mark.parametrize("family", sorted(SHAPES))
def test_tiny_then_info_describes_the_family(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, family: str
) -> None:
    out_dir = tmp_path / family
    code, out, _ = _run(capsys, "model", "tiny", "--family", family, "--out", str(out_dir))
    assert code == 0 and str(out_dir) in out
    code, out, _ = _run(capsys, "model", "info", str(out_dir), "--json")
    info = json.loads(out)
    layers, routed, shared, top_k = SHAPES[family]
    assert code == 0 and info["family"] == family
    assert (info["moe_layers"], info["routed_experts"], info["shared_slices"], info["top_k"]) == (
        layers,
        routed,
        shared,
        top_k,
    )
    assert info["num_layers"] == len(layers) and info["num_experts"] == routed + shared
    experts = info["num_layers"] * info["num_experts"]
    assert info["all_experts_bytes"]["fp32"] == experts * info["expert_bytes"]["fp32"]
    assert 0 < info["dense_bytes"] < info["bytes_on_disk"]


def test_eval_reads_plans_in_the_family_shape(tmp_path: Path) -> None:
    """`moeqos eval --plan` parses plans over MoE layers x (routed + shared slices) experts."""
    from moeqos.cli.eval_cmds import read_plan

    directory = tmp_path / "deepseek"
    assert main(["model", "tiny", "--family", "deepseek_v3", "--out", str(directory)]) == 0
    plan = read_plan("int4@cpu,L*.E8=bf16", directory, "cpu")  # E8: the shared expert of each layer
    assert (plan.num_layers, plan.num_experts) == (2, 9)
    assert [plan[(layer, 8)].precision.value for layer in (0, 1)] == ["bf16", "bf16"]


def test_an_unknown_family_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "model", "tiny", "--family", "llama", "--out", str(tmp_path / "x"))
    assert code == 2 and "llama" in err and "qwen2_moe" in err
    assert not (tmp_path / "x").exists()


def test_info_on_an_unsupported_model_type_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, _ = _run(capsys, "model", "tiny", "--family", "olmoe", "--out", str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    code, out, _ = _run(capsys, "model", "info", str(tmp_path / "m"), "--json")
    assert code == 2 and "not supported" in json.loads(out)["error"]
