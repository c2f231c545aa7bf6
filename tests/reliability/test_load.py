"""The load harness (moeqos.bench.load) against real processes: no request may fail while the planner re-plans
the executors, refusals past the bounded queue are clean, every token a request was told of arrived, a slow
reader loses its slot after the write window, and memory does not grow across plan switches."""

from __future__ import annotations

import asyncio
import os

import pytest
from moeqos.bench.load import LoadSettings, run
from moeqos.bench.load_probes import ProbeReport, SlowReaderOutcome, rss_mib
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


def test_the_probes_flag_a_slot_kept_and_memory_grown():
    fine = ProbeReport(
        2.0,
        (SlowReaderOutcome("a:1", 2.3), SlowReaderOutcome("b:1", 3.9)),
        (("a:1", 6, 500.0, 549.0), ("b:1", 1, 500.0, 900.0)),  # one switch: nothing to compare
    )
    assert fine.problems() == ()
    assert "2.3 s, 3.9 s" in summarize(1, 1.0, [], 0, 0, (), fine).table()
    bad = ProbeReport(
        2.0, (SlowReaderOutcome("a:1", None), SlowReaderOutcome("b:1", 4.1)), (("a:1", 6, 500.0, 551.0),)
    )
    report = summarize(1, 1.0, [], 0, 0, (), bad)
    assert report.probe_problems == bad.problems() and len(bad.problems()) == 3
    assert "a:1: a slow reader held its slot for good" in report.table()
    assert "RSS 500 -> 551 MiB over 6 plan switches" in report.table()


def test_after_the_run_waits_for_requests_to_leave_and_flags_one_that_stays(monkeypatch):
    """Regression: a client has its last message before the server hands its admission slot back, so
    a check at once read `1 running` on a CI run; a request still there SETTLE_S later is a problem."""
    from types import SimpleNamespace

    from moeqos.bench import load
    from moeqos.core.service_types import ReplanState

    active = {"leaving": [1, 1, 0], "stuck": [1] * 1000}

    class Client:  # moeqos.client.AsyncExecutorClient: GetInfo and health
        def __init__(self, address: str) -> None:
            self.counts = iter(active[address])

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def info(self):
            return SimpleNamespace(
                active_generations=next(self.counts), queued_generations=0, replan_state=ReplanState.IDLE
            )

        async def health(self) -> str:
            return "SERVING"

    monkeypatch.setattr(load, "AsyncExecutorClient", Client)
    monkeypatch.setattr(load, "SETTLE_S", 0.5)
    assert asyncio.run(load.after_the_run(["leaving"])) == []
    assert asyncio.run(load.after_the_run(["stuck"])) == ["stuck: SERVING, 1 running, 0 queued"]


def test_rss_is_read_from_proc():
    assert 10 < rss_mib(os.getpid()) < 1_000_000


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
        write_window_s=2.0,
    )
    report = run(settings)
    print(report.table())
    assert report.failed == 0, report.failures
    assert not report.control_failures and not report.probe_problems
    assert report.probes is not None and len(report.probes.slow_readers) == 2
    assert all(r.held_s is not None and 1.5 < r.held_s < 4.0 for r in report.probes.slow_readers)
    assert all(switches >= 2 for _, switches, _, _ in report.probes.memory)
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
    assert not report.control_failures and not report.probe_problems and report.completed > 0
