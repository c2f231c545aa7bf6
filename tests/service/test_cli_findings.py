"""A new user's CLI findings (issue 17), through `moeqos.cli.main.main` or a real `moeqos` process: clear
errors with one exit-code convention (2 usage/input, 1 service/runtime) and never a traceback,
unit-less sizes refused, one byte format, `--version`, a self-describing `whatif`, progress on stderr
during long waits with stdout left clean."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
from moeqos.cli.main import main
from moeqos.core import progress
from moeqos.planner.catalog import HARDWARE, MODELS

from tests.service.service_harness import address


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def _moeqos(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moeqos.cli.main", *argv], capture_output=True, text=True, timeout=timeout
    )


def test_bad_input_is_a_message_and_exit_2_in_every_command(capsys, tmp_path, executor_address):
    missing = str(tmp_path / "missing.json")
    for argv, says in (
        (["model", "info", "--model", str(tmp_path / "BADDIR")], "not a model directory"),
        (["whatif", "--hardware", missing], "cannot read hardware file"),
        (["plan", "--profile", missing, "--min-tps", "1"], "cannot read profile"),
        (["apply", "--executor", executor_address, "--plan", f"@{missing}"], "cannot read the plan file"),
        (["whatif", "--model", "nope"], "unknown model"),
    ):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and says in err, (argv, code, err)


def test_a_hardware_file_that_is_not_a_description_is_a_clear_error(capsys, tmp_path):
    path = tmp_path / "hw.json"
    path.write_text('{"name": "x"}')
    code, _, err = _run(capsys, "whatif", "--hardware", str(path))
    assert code == 2 and "is not a hardware description" in err and "--hardware-template" in err


def test_a_bad_initial_plan_is_exit_2_without_a_traceback(tiny_model):
    done = _moeqos(
        "executor", "--model", str(tiny_model), "--listen", "127.0.0.1:0", "--initial-plan", "int5"
    )
    assert done.returncode == 2, done.stderr
    assert "unknown precision 'int5'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("service", ["planner", "executor"])
def test_a_busy_port_is_exit_1_with_a_clear_message(service, tiny_model):
    with socket.socket() as busy:
        # SO_REUSEPORT, as a gRPC server sets it: a server that set it too would share the port silently.
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        extra = ["--model", str(tiny_model)] if service == "executor" else []
        done = _moeqos(service, "--listen", f"127.0.0.1:{busy.getsockname()[1]}", *extra, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["whatif", "--budget", "cuda:0=70"], ["set-budget", "cpu=70"]])
def test_a_size_without_a_unit_is_refused(argv, capsys):
    try:
        code, _, err = _run(capsys, *argv)
    except SystemExit as exit_:  # argparse's own usage error, for a flag type
        code, err = int(exit_.code or 0), capsys.readouterr().err
    assert code == 2 and "a unit is required" in err and "GiB" in err


def test_version_and_the_exit_codes_in_help(capsys):
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("moeqos 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "exit codes:" in help_text and "usage or input error" in help_text


def test_whatif_help_names_the_catalogue_and_its_template_round_trips(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["whatif", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in (*MODELS, *HARDWARE)) and "--hardware-template" in help_text
    code, out, _ = _run(capsys, "whatif", "--hardware-template")
    path = tmp_path / "mine.json"
    path.write_text(out)
    code, out, _ = _run(capsys, "whatif", "--model", "mixtral-8x7b", "--hardware", str(path), "--json")
    assert code == 0 and len(json.loads(out)["points"]) >= 2


def test_model_info_prints_sizes_in_binary_units(capsys, tiny_model):
    code, out, _ = _run(capsys, "model", "info", "--model", str(tiny_model))
    size = r"(\d+\.\d\d [KMGT]iB|\d+ B)"
    lines = {line[:18].strip(): line[18:].strip() for line in out.splitlines()}
    assert code == 0 and re.fullmatch(size, lines["dense weights"]) and re.fullmatch(size, lines["on disk"])
    for label in ("one expert", "all experts"):
        assert re.fullmatch(rf"(\w+={size}\s*)+", lines[label]) and "bf16=" in lines[label], lines[label]


def test_status_prints_tiers_in_the_same_units(capsys, executor_address):
    code, out, _ = _run(capsys, "status", "--executor", executor_address)
    assert code == 0 and re.search(r"cpu:\d+\.\d\d (KiB|MiB|GiB)/\d+\.\d\d (KiB|MiB|GiB)", out), out
    assert not re.search(r"\d(KiB|MiB|GiB)", out)  # no second style such as "1.00MiB"


def test_a_long_deploy_shows_progress_on_stderr_and_keeps_stdout_json(
    capsys, monkeypatch, stack, planner_address
):
    monkeypatch.setattr(progress, "AFTER_S", 0.0)  # every wait counts as long
    handle = stack.executor()
    target = address(handle.port)
    code, out, err = _run(
        capsys, "deploy", "--planner", planner_address, "--executor", target, "--min-tps", "0.001", "--json"
    )
    assert code == 0 and json.loads(out)[0]["executor"] == target
    assert "deploying to 1 executor(s)" in err and "done after" in err


def test_model_prepare_steps_without_a_bar_have_a_heartbeat(capsys):
    import time

    from moeqos.executor.default_model import build

    with build._step(True, "measuring the upcycled model"):
        time.sleep(0.3)
    with build._step(False, "silent"):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "measuring the upcycled model... (0 s)" in err and "measuring the upcycled model: done" in err
    assert "silent" not in err
