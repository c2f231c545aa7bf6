"""The frontier section's informational fit on ptb:valid (BenchContext.valid_quality) measures all of
its quality text there: the fitting plans and the layers and loud layers' experts alone (they were
measured on the profile's ptb:test, and they shape the signal and join the fit)."""

from __future__ import annotations

from pathlib import Path

from moeqos.bench.context import BenchContext
from moeqos.bench.settings import QUICK
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision

from tests.bench.test_quality_section import _measured_alone_profile, _recorded_alone, _Runtime


def test_the_fit_on_ptb_valid_measures_the_layers_alone_on_ptb_valid(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    profile = _measured_alone_profile()  # its layers alone as measured on the profile's own text
    asked = _recorded_alone(monkeypatch)
    corpora = []

    def tokens(self: BenchContext, corpus: str, count: int) -> list[int]:
        corpora.append(corpus)
        return list(range(100, 165))

    plans = [Plan.uniform(2, 3, p, "cpu") for p in (Precision.BF16, Precision.INT4)]
    monkeypatch.setattr(BenchContext, "profile", property(lambda self: profile))
    monkeypatch.setattr(BenchContext, "runtime", property(lambda self: _Runtime()))
    monkeypatch.setattr(BenchContext, "fitting_plans", property(lambda self: plans))
    monkeypatch.setattr(BenchContext, "tokens", tokens)
    model = BenchContext(tiny_model, QUICK, tmp_path, "test").valid_quality
    assert corpora == ["ptb:valid"]
    assert [(ids, reference) for ids, _, reference, _ in asked] == [(list(range(100, 165)), Precision.BF16)]
    assert model.corpus == "ptb:valid"
    assert "2 layers measured alone" in model.basis
