"""The throughput model's error bench (moeqos.bench.batch_error): the all-decoding window's rate, the
report's errors and table, and the settings checked."""

import pytest
from moeqos.bench.batch_error import ErrorReport, ErrorSettings, Pair, parse_plans, window_rate
from moeqos.bench.load import LoadSettings


def test_the_window_counts_only_steps_where_every_stream_decodes():
    # stream 0 starts at 0 and steps every 0.5 s; stream 1 joins at 1.0 and leaves after 3.0
    first = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    second = [1.0, 1.5, 2.0, 2.5, 3.0]
    # window (1.0, 3.0]: 4 tokens each in 2 s -> 2 tokens/s per stream
    assert window_rate([first, second]) == pytest.approx(2.0)
    with pytest.raises(RuntimeError, match="no window"):
        window_rate([[0.0, 0.5], [1.0, 1.5]])


def test_the_report_gives_each_pair_and_the_mean_error():
    pairs = (Pair("bf16@cpu", 1, 11.0, 10.0), Pair("bf16@cpu", 16, 1.8, 2.0))
    report = ErrorReport(pairs, 120.0, 6.5)
    assert report.mape == pytest.approx(0.1)
    lines = report.table().splitlines()
    assert lines[0] == "profile 120.0 s, of which the batch stage 6.5 s"
    assert lines[3].split() == ["bf16@cpu", "16", "1.80", "2.00", "28.80", "32.00", "10.0%"]
    assert lines[-1].startswith("MAPE 10.0% over 2")


def test_settings_and_plans_are_checked():
    assert parse_plans("int8@cpu; bf16@cpu;") == ("int8@cpu", "bf16@cpu")
    assert len(parse_plans(None)) == 3
    with pytest.raises(ValueError, match="max_tokens"):
        ErrorSettings(streams=(1, 16), load=LoadSettings(max_tokens=16))
    with pytest.raises(ValueError):
        ErrorSettings(streams=(0,))
