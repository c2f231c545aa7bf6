"""The load harness (moeqos.bench.load) against real processes: no request may fail while the planner re-plans
the executors, refusals past the bounded queue are clean, and every token a request was told of arrived."""

from __future__ import annotations

import pytest
from moeqos.bench.load import LoadSettings, run
from moeqos.bench.load_report import RequestRecord, summarize
from moeqos.executor.default_model.location import moeqos_home


def test_the_report_counts_refusals_apart_from_failures():
    records = [
        RequestRecord("completed", ttft_s=0.01 * i, tokens=10, decode_tokens_per_s=5.0 * i, plan=f"p{i % 2}")
        for i in range(1, 101)
    ]
    records += [RequestRecord("refused")] * 7 + [RequestRecord("failed", error="hung")] * 2
    report = summarize(4, 10.0, records, deploys=3, budget_changes=2, control_failures=())
    assert (report.completed, report.refused, report.failed, report.failures) == (100, 7, 2, ("hung", "hung"))
    assert report.ttft_p50_s == pytest.approx(0.505) and report.ttft_p99_s == pytest.approx(0.9901)
    assert report.tokens == 1000 and report.tokens_per_s == pytest.approx(100.0)
    assert report.plans_served == 2 and "requests refused (RESOURCE_EXHAUSTED)  7" in report.table()


@pytest.mark.e2e
def test_load_on_the_tiny_model_loses_nothing(tiny_model, profile_file, tmp_path):
    """Eight clients against two executors that admit six requests at once: some are refused."""
    (tmp_path / "profile.json").write_bytes(profile_file.read_bytes())
    settings = LoadSettings(
        duration_s=25.0,
        clients=8,
        model_dir=tiny_model,
        replan_every_s=3.0,
        max_tokens=16,
        max_concurrent=1,
        max_queued=2,
        work_dir=tmp_path,
        threads=1,
    )
    report = run(settings)
    print(report.table())
    assert report.failed == 0, report.failures
    assert not report.control_failures
    assert report.completed > 0 and report.deploys >= 2 and report.budget_changes >= 2
    assert report.plans_served >= 2  # requests were served across re-plans


@pytest.mark.slow
def test_load_on_the_default_model(tmp_path):
    """The issue's run: 16 clients for a minute on the embedded default model."""
    profile = moeqos_home() / "profiles" / "load-default-model.json"  # measured once (minutes), then reused
    profile.parent.mkdir(parents=True, exist_ok=True)
    report = run(LoadSettings(duration_s=60.0, clients=16, work_dir=tmp_path, profile_path=profile))
    print(report.table())
    assert report.failed == 0, report.failures
    assert not report.control_failures and report.completed > 0
