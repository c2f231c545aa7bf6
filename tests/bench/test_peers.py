"""The `peers` section's build and llama-bench logic without building anything: the commands it runs,
cache hits, the skip when cmake or the download is missing, and llama-bench's JSON (a recorded run)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from moeqos.bench import peer_build, peer_llama, peers
from moeqos.bench.peer_build import PeerSkipped, Toolchain, ensure_peer, find_toolchain, is_built, peer_at
from moeqos.bench.settings import SECTIONS, parse_sections
from moeqos.core.precision import Precision

SAMPLE = Path(__file__).parent / "data" / "llama_bench_sample.json"
"""`llama-bench -m ....q4_0.gguf -t 2 -p 0 -n 8 -d 48 -r 2 -o json`, recorded from the real build."""

TOOLS = {"cmake": "/usr/bin/cmake", "cc": "/usr/bin/cc", "c++": "/usr/bin/c++", "ninja": "/usr/bin/ninja"}


def _which(available: dict[str, str]):
    return available.get


def _built(home: Path) -> peer_build.Peer:
    """A cache holding a finished build: the tools and the marker (no compiler involved)."""
    peer = peer_at(home)
    for tool in (peer.bench, peer.quantize):
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text("#!/bin/sh\n")
    peer_build.mark_built(peer, find_toolchain(_which(TOOLS)))
    return peer


def _no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"nothing may run, got {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_missing_cmake_or_compiler_is_a_skip_that_names_it():
    with pytest.raises(PeerSkipped, match="no cmake on PATH"):
        find_toolchain(_which({k: v for k, v in TOOLS.items() if k != "cmake"}))
    with pytest.raises(PeerSkipped, match="no cmake and no a C compiler and no a C\\+\\+ compiler"):
        find_toolchain(_which({}))
    assert find_toolchain(_which({"cmake": "/c", "gcc": "/g", "g++": "/gxx"})) == Toolchain(
        "/c", "/g", "/gxx", None
    )


def test_the_build_commands(tmp_path):
    """The commands as the module pins them (version, package, targets, CMake options): a new pin
    changes no test, a dropped or reordered argument does."""
    peer = peer_at(tmp_path)
    tools = find_toolchain(_which(TOOLS))
    version = peer_build.VERSION
    sdist = f"{peer_build.PACKAGE.replace('-', '_')}-{version}"
    assert peer.source == tmp_path / f"llama.cpp-{version}" / sdist / "vendor" / "llama.cpp"
    compilers = ["-DCMAKE_C_COMPILER=/usr/bin/cc", "-DCMAKE_CXX_COMPILER=/usr/bin/c++"]
    build_dir = ["-B", str(peer.root / "build")]
    configure = peer_build.configure_command(tools, peer)
    assert configure == [
        "/usr/bin/cmake", "-S", str(peer.source), *build_dir, "-G", "Ninja", *compilers,
        *peer_build.CMAKE_OPTIONS,
    ]  # fmt: skip
    assert "-DGGML_NATIVE=ON" in configure and "-DLLAMA_BUILD_TESTS=OFF" in configure
    no_ninja = peer_build.configure_command(Toolchain("/c", "/cc", "/cxx", None), peer)
    assert "-G" not in no_ninja
    build = peer_build.build_command(tools, peer, jobs=2)
    assert build == ["/usr/bin/cmake", "--build", build_dir[1], "--target", *peer_build.TARGETS, "-j", "2"]
    assert set(peer_build.TARGETS) == {peer.bench.name, peer.quantize.name}  # the tools the peer runs
    download = peer_build.download_command(tmp_path / "downloads")
    assert download[1:] == [
        "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"{peer_build.PACKAGE}=={version}", "--dest", str(tmp_path / "downloads"),
    ]  # fmt: skip


def test_a_finished_build_is_a_cache_hit(tmp_path, monkeypatch):
    peer = _built(tmp_path)
    assert is_built(peer)
    _no_subprocess(monkeypatch)
    monkeypatch.setattr(peer_build.shutil, "which", _which({}))  # not even the toolchain is looked for
    assert ensure_peer(tmp_path, log=lambda _: None) == peer


@pytest.mark.parametrize("missing", ["marker", "llama-bench", "llama-quantize"])
def test_an_unfinished_build_is_no_cache_hit(tmp_path, missing):
    peer = _built(tmp_path)
    {"marker": peer.root / peer_build.MARKER, "llama-bench": peer.bench, "llama-quantize": peer.quantize}[
        missing
    ].unlink()
    assert not is_built(peer)


def test_no_cmake_skips_before_downloading(tmp_path, monkeypatch):
    _no_subprocess(monkeypatch)
    monkeypatch.setattr(peer_build.shutil, "which", _which({"cc": "/cc", "c++": "/cxx"}))
    with pytest.raises(PeerSkipped, match="no cmake"):
        ensure_peer(tmp_path, log=lambda _: None)
    assert not (tmp_path / "downloads").exists()


def test_a_failed_download_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(peer_build.shutil, "which", _which(TOOLS))
    failed = subprocess.CompletedProcess(
        [], 1, "", "ERROR: Could not find a version\nERROR: No matching distribution"
    )
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(PeerSkipped, match="could not be downloaded: ERROR: No matching distribution"):
        ensure_peer(tmp_path, log=lambda _: None)


def test_the_section_reports_the_skip(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEQOS_HOME", str(tmp_path))
    monkeypatch.setattr(peer_build.shutil, "which", _which({"cc": "/cc", "c++": "/cxx"}))
    result = peers.run(SimpleNamespace(log=lambda _: None))
    assert result.error is None and result.data == {
        "skipped": "llama.cpp cannot be built here: no cmake on PATH"
    }
    assert "peers: skipped" in result.render("machine: test") and "no cmake on PATH" in result.render("")


def test_peers_runs_only_when_named():
    assert "peers" not in parse_sections(None) and parse_sections(None) == list(SECTIONS)
    assert parse_sections("peers,baseline") == ["baseline", "peers"]


def test_the_convert_quantize_and_bench_commands(tmp_path):
    peer = peer_at(tmp_path)
    model = tmp_path / "model"
    convert = peer_llama.convert_command(peer, model, tmp_path / "m.bf16.partial")
    assert convert[1:] == [
        str(peer.converter),
        str(model),
        "--outtype",
        "bf16",
        "--outfile",
        str(tmp_path / "m.bf16.partial"),
    ]
    assert peer_llama.converter_env(peer)["PYTHONPATH"].split(":")[0] == str(peer.gguf_py)
    source, out = tmp_path / "a.gguf", tmp_path / "b.gguf"
    for precision, gguf_type in peer_llama.GGUF_TYPES.items():
        quantize = peer_llama.quantize_command(peer, source, out, precision, 2)
        assert quantize == [
            str(peer.quantize), "--pure", *peer_llama.DENSE_BF16, str(source), str(out), gguf_type, "2"
        ]  # fmt: skip
    assert peer_llama.GGUF_TYPES[Precision.INT4] == "Q4_0"  # the format the README compares int4 with
    assert all(value.endswith("bf16") for value in peer_llama.DENSE_BF16[1::2])  # dense weights stay bf16
    bench = peer_llama.bench_command(peer, out, threads=2, prompt=48, tokens=32, repeats=3)
    flags = dict(zip(bench[1::2], bench[2::2], strict=True))  # llama-bench's -flag value pairs
    assert bench[0] == str(peer.bench)
    assert flags == {"-m": str(out), "-t": "2", "-p": "0", "-n": "32", "-d": "48", "-r": "3", "-o": "json"}


def test_converted_files_are_cache_hits_keyed_by_the_checkpoint(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"x" * 10)
    for precision in (Precision.BF16, Precision.INT8):
        path = peer_llama.gguf_path(tmp_path, model, precision)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF")
    _no_subprocess(monkeypatch)
    files = peer_llama.ensure_ggufs(
        peer_at(tmp_path), tmp_path, model, [Precision.INT8], 2, log=lambda _: None
    )
    assert files == {Precision.INT8: tmp_path / "gguf" / f"{peer_llama.model_key(model)}.q8_0.gguf"}
    key = peer_llama.model_key(model)
    (model / "model.safetensors").write_bytes(b"x" * 11)  # other weights: other files
    assert peer_llama.model_key(model) != key and peer_llama.model_key(model).startswith("model-")


def test_llama_bench_json_from_a_recorded_run():
    [speed] = peer_llama.parse_bench_json(SAMPLE.read_text())
    assert (speed.n_prompt, speed.n_gen, speed.n_depth, speed.threads) == (0, 8, 48, 2)
    assert len(speed.samples_ts) == 2 and all(s > 0 for s in speed.samples_ts)
    assert min(speed.samples_ts) <= speed.tokens_per_s <= max(speed.samples_ts)
    assert "Q4_0" in speed.model_type or "q4_0" in speed.model_type.lower()


@pytest.mark.parametrize("text", ["", "[{}]", '{"avg_ts": 1}', "not json"])
def test_other_output_is_not_taken_for_llama_bench_json(text):
    with pytest.raises(ValueError, match="not llama-bench JSON"):
        peer_llama.parse_bench_json(text)
