"""The opt-in `singles` section: every expert quantized alone, on a stand-in runtime whose perplexity is
known per plan, and for real on a tiny random Mixtral through the bench's runner."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from moeqos.bench import singles
from moeqos.bench.runner import main
from moeqos.bench.settings import SECTIONS, parse_sections
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.service_types import Evaluation

LAYERS, EXPERTS = 3, 4
OUTLIER = (1, 2)


class _Runtime:
    """Log perplexity 2 + 0.001 per int4 expert + 0.05 for OUTLIER in int4 on the eval text only (token
    ids below 100) + 0.01 x (int4 experts)^2: one expert that costs on one text, damage superadditive."""

    def evaluate(self, ids, plan, context_length, decode_tokens):
        int4 = [key for key, a in plan.items() if a.precision == Precision.INT4]
        log_ppl = 2.0 + 0.001 * len(int4) + 0.01 * len(int4) ** 2
        if OUTLIER in int4 and ids[0] < 100:
            log_ppl += 0.05
        return Evaluation(math.exp(log_ppl), 0.0, len(ids) - 1, plan.to_spec(), "", 0.1, 0)


def _context():
    return SimpleNamespace(
        shape=(LAYERS, EXPERTS),
        full_precision=Plan.uniform(LAYERS, EXPERTS, Precision.BF16, "cpu"),
        test_ids=list(range(64)),
        tokens=lambda corpus, count: list(range(100, 100 + count)),
        runtime=_Runtime(),
        settings=SimpleNamespace(context_length=32, eval_tokens=64),
        log=lambda message: None,
    )


def test_each_expert_alone_on_both_texts_and_all_at_once():
    result = singles.run(_context())
    data = result.data
    alone = 0.001 + 0.01  # one int4 expert: its own cost and the square of one
    every = 0.001 * LAYERS * EXPERTS + 0.01 * (LAYERS * EXPERTS) ** 2
    assert data["eval"]["singles"][OUTLIER[0]][OUTLIER[1]] == pytest.approx(alone + 0.05)
    assert data["calibration"]["singles"][OUTLIER[0]][OUTLIER[1]] == pytest.approx(alone)
    assert data["calibration"]["singles"][0] == pytest.approx([alone] * EXPERTS)
    assert data["eval"]["all_at_once"] == pytest.approx(every + 0.05)
    assert data["calibration"]["all_at_once"] == pytest.approx(every)
    assert (data["eval"]["corpus"], data["eval"]["tokens"]) == ("ptb:test", 64)
    assert (data["calibration"]["corpus"], data["calibration"]["tokens"]) == ("ptb:train", 32)
    rendered = result.render("machine: test")
    first_row = rendered.split("L1.E2")[1].splitlines()[0].split()
    assert [float(x) for x in first_row] == pytest.approx(
        [100 * math.expm1(alone + 0.05), 100 * math.expm1(alone)], rel=1e-3
    )  # the costliest on the eval text first, with what it costs on the other text
    assert f"all at once {100 * math.expm1(every):+.3g}%" in rendered


def test_singles_runs_only_when_named():
    assert "singles" not in parse_sections(None) and parse_sections(None) == list(SECTIONS)


def test_on_a_tiny_model_through_the_runner(tmp_path, capsys):
    from moeqos.executor.testing import make_tiny_mixtral

    model = make_tiny_mixtral(tmp_path / "tiny")
    status = main(["--model", str(model), "--quick", "--only", "singles", "--out", str(tmp_path / "out")])
    section = json.loads((tmp_path / "out" / "results.json").read_text())["sections"]["singles"]
    assert status == 0 and section["error"] is None
    data = section["data"]
    for name in ("eval", "calibration"):
        grid = data[name]["singles"]
        assert len(grid) == 2 and all(len(row) == len(grid[0]) > 1 for row in grid)
        assert all(math.isfinite(x) for row in grid for x in row) and math.isfinite(data[name]["all_at_once"])
        assert any(x != 0 for row in grid for x in row)  # a random model's experts do change its output
    assert "singles: the 10 experts that cost most alone" in capsys.readouterr().out
