"""`moeqos eval` end to end on a tiny upcycled model: the real runtime, real quantization, a real corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from moeqos.cli.main import main
from moeqos.core.corpora import load_corpus, tokenize_prefix
from moeqos.executor.default_model.check import perplexity
from moeqos.executor.default_model.location import ensure_default_model
from transformers import AutoTokenizer, MixtralForCausalLM

ARGS = [
    "--corpus",
    "ptb:test",
    "--max-tokens",
    "300",
    "--context",
    "64",
    "--decode-tokens",
    "4",
    "--group-size",
    "16",
    "--json",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> Path:
    target = tmp_path_factory.mktemp("models") / "tiny-moe8"
    return ensure_default_model(progress=False, model_dir=target, source=tiny_source)


def _eval(capsys: pytest.CaptureFixture[str], model: Path, plan: str, *extra: str) -> dict:
    assert main(["eval", "--model", str(model), "--plan", plan, *ARGS, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_matches_the_reference_perplexity(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _eval(capsys, tiny_model, "fp32")
    reference_model = MixtralForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokens = tokenize_prefix(load_corpus("ptb:test"), AutoTokenizer.from_pretrained(tiny_model), 300)
    reference, scored = perplexity(reference_model, tokens.token_ids, 64)
    assert result["measured_on"] == "ptb:test[:300 tokens]" and result["tokens_scored"] == scored
    assert result["perplexity"] == pytest.approx(reference, rel=2e-2)
    assert result["tokens_per_s"] > 0 and result["plan_summary"] == "3x8 experts: 24xfp32@cpu"
    assert (result["decode_tokens"], result["decode_eos"], result["decode_warmup_runs"]) == (4, "ignored", 1)


def test_eval_reacts_to_precision_and_reads_plan_files(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bf16 = _eval(capsys, tiny_model, "bf16")
    mixed = _eval(capsys, tiny_model, "int2,L0.E*=bf16")
    assert mixed["perplexity"] != bf16["perplexity"]
    assert mixed["expert_bytes_per_tier"]["cpu"] < bf16["expert_bytes_per_tier"]["cpu"]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"group_size": 16, "assignments": [["int8@cpu"] * 8] * 3}))
    from_file = _eval(capsys, tiny_model, f"@{plan_file}")
    assert from_file["plan"] == "int8@cpu"


def test_eval_rejects_a_bad_plan(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(tiny_model), "--plan", "int5", *ARGS]) == 2
    assert "unknown precision" in capsys.readouterr().err


def test_eval_takes_group_sizes_and_bit_packed_precisions_by_name(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`int4g32` keeps its groups of 32 under `--group-size 16` (the bare names' group; on this model's
    intermediate 48 a short last group of 16); int3 and int2 are bit-packed, so their experts cost less
    than int4's (issues 20 and 18)."""
    results = {p: _eval(capsys, tiny_model, f"{p}@cpu") for p in ("int4", "int4g32", "int3", "int2")}
    cpu = {p: r["expert_bytes_per_tier"]["cpu"] for p, r in results.items()}
    assert results["int4g32"]["plan"] == "int4g32@cpu"
    assert cpu["int4g32"] < cpu["int4"]  # fewer scales and zeros than groups of 16
    assert results["int4g32"]["perplexity"] != results["int4"]["perplexity"]
    assert cpu["int2"] < cpu["int3"] < cpu["int4"]
