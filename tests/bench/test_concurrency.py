"""The load harness's concurrency sweep: levels parsed, each level summarised from its request records,
and ratios to the first level in the table."""

import pytest
from moeqos.bench.concurrency import Level, SweepReport, SweepSettings, parse_streams
from moeqos.bench.load_report import RequestRecord, summarize


def _level(streams: int, seconds: float, rate: float, refused: int = 0, failed: int = 0) -> Level:
    records = [RequestRecord("completed", 0.5, 10, rate) for _ in range(streams)]
    records += [RequestRecord("refused")] * refused + [RequestRecord("failed", error="hung")] * failed
    return Level(streams, summarize(streams, seconds, records, 0, 0, ()))


def test_sweep_table_gives_each_level_against_the_first():
    report = SweepReport((_level(1, 10.0, 8.0), _level(4, 10.0, 4.0, refused=1, failed=2)), 4, 4)
    lines = report.table().splitlines()
    assert lines[0] == "executor: batch 4, queue 4"
    assert lines[2].split()[:5] == ["1", "1.0", "1.00x", "8.0", "1.00x"]
    assert lines[3].split()[:5] == ["4", "4.0", "4.00x", "4.0", "0.50x"]  # 4x the tokens, half the rate
    assert lines[3].split()[-2:] == ["1", "2"] and report.failed == 2
    assert lines[-1] == "failure: hung"


def test_levels_are_parsed_and_checked():
    assert parse_streams("1, 4,8,16") == (1, 4, 8, 16)
    with pytest.raises(ValueError):
        SweepSettings(streams=(0, 4))
    with pytest.raises(ValueError):
        SweepSettings(level_seconds=0)
    with pytest.raises(ValueError):
        parse_streams("1,x")
