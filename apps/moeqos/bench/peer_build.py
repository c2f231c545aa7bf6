"""llama.cpp's `llama-bench` and `llama-quantize`, built once from the llama.cpp that the
`llama-cpp-python` source distribution on PyPI vendors, for the `peers` section.

Only package registries may be reachable, so the source comes through pip
(`pip download --no-deps --no-binary :all: llama-cpp-python==VERSION`). The cache, under
`$MOEQOS_HOME/peers` (moeqos.executor.default_model.location.moeqos_home):

    downloads/llama_cpp_python-VERSION.tar.gz     the source distribution
    llama.cpp-VERSION/llama_cpp_python-VERSION/   it, unpacked (llama.cpp in vendor/llama.cpp)
    llama.cpp-VERSION/build/bin/llama-bench       the build (cmake, Release, CPU only, static)
    llama.cpp-VERSION/build.log                   what the configure and build printed
    llama.cpp-VERSION/moeqos-peer.json            written last: the build is complete

Nothing is rebuilt once the marker is there. Without cmake or a C/C++ compiler, or when the download
fails, `PeerSkipped` says why and the section skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moeqos.executor.default_model.location import moeqos_home

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
"""The source distribution built (pinned: its llama.cpp is the one the README's numbers come from)."""
TARGETS = ("llama-bench", "llama-quantize")
MARKER = "moeqos-peer.json"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",  # the CPU kernels this machine runs best, as moeqos's torch uses
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)
"""CPU only, nothing but the two tools and the libraries they link."""


class PeerSkipped(Exception):
    """The peer cannot be built or run here; the message says why (the section reports it, not an error)."""


@dataclass(frozen=True)
class Toolchain:
    """The build tools found on PATH."""

    cmake: str
    c_compiler: str
    cxx_compiler: str
    ninja: str | None
    """Used as the generator when present (else cmake's default, make)."""


@dataclass(frozen=True)
class Peer:
    """A finished build: the two tools and the converter with the gguf package it imports."""

    root: Path
    """`llama.cpp-VERSION` under the cache."""
    source: Path
    """The vendored llama.cpp tree."""

    @property
    def bench(self) -> Path:
        return self.root / "build" / "bin" / "llama-bench"

    @property
    def quantize(self) -> Path:
        return self.root / "build" / "bin" / "llama-quantize"

    @property
    def converter(self) -> Path:
        return self.source / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.source / "gguf-py"


def peers_home(env: Mapping[str, str] | None = None) -> Path:
    """Where the peer builds and converted models are cached: `$MOEQOS_HOME/peers`."""
    return moeqos_home(env) / "peers"


def find_toolchain(which: Callable[[str], str | None] | None = None) -> Toolchain:
    """cmake and a C and C++ compiler from PATH (`which`: shutil.which); PeerSkipped naming what is missing."""
    which = which or shutil.which
    cmake = which("cmake")
    c = next((path for name in ("cc", "gcc", "clang") if (path := which(name))), None)
    cxx = next((path for name in ("c++", "g++", "clang++") if (path := which(name))), None)
    missing = [
        name for name, path in (("cmake", cmake), ("a C compiler", c), ("a C++ compiler", cxx)) if not path
    ]
    if missing or cmake is None or c is None or cxx is None:
        raise PeerSkipped(f"llama.cpp cannot be built here: no {' and no '.join(missing)} on PATH")
    return Toolchain(cmake, c, cxx, which("ninja"))


def peer_at(home: Path, version: str = VERSION) -> Peer:
    """Where the build of `version` lives (finished or not)."""
    root = home / f"llama.cpp-{version}"
    return Peer(root, root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp")


def is_built(peer: Peer) -> bool:
    """True when the build finished (its marker written last) and both tools are still there."""
    return (peer.root / MARKER).is_file() and all(path.is_file() for path in (peer.bench, peer.quantize))


def download_command(dest: Path, version: str = VERSION) -> list[str]:
    """pip fetches the source distribution only (no wheel, no dependencies)."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"{PACKAGE}=={version}", "--dest", str(dest),
    ]  # fmt: skip


def configure_command(tools: Toolchain, peer: Peer) -> list[str]:
    generator = ["-G", "Ninja"] if tools.ninja else []
    compilers = [f"-DCMAKE_C_COMPILER={tools.c_compiler}", f"-DCMAKE_CXX_COMPILER={tools.cxx_compiler}"]
    return [
        tools.cmake,
        "-S",
        str(peer.source),
        "-B",
        str(peer.root / "build"),
        *generator,
        *compilers,
        *CMAKE_OPTIONS,
    ]


def build_command(tools: Toolchain, peer: Peer, jobs: int) -> list[str]:
    return [tools.cmake, "--build", str(peer.root / "build"), "--target", *TARGETS, "-j", str(jobs)]


def sdist_path(home: Path, version: str = VERSION) -> Path:
    return home / "downloads" / f"llama_cpp_python-{version}.tar.gz"


def ensure_peer(home: Path | None = None, log: Callable[[str], None] = print) -> Peer:
    """The built peer, downloading and building it first when the cache has none (minutes: ~10 on two
    cores). PeerSkipped when it cannot be built here; RuntimeError when a build step fails."""
    home = home if home is not None else peers_home()
    peer = peer_at(home)
    if is_built(peer):
        return peer
    tools = find_toolchain()
    sdist = sdist_path(home)
    if not sdist.is_file():
        log(f"downloading {PACKAGE}=={VERSION} (source distribution) with pip")
        done = subprocess.run(download_command(sdist.parent), capture_output=True, text=True, check=False)
        if done.returncode != 0 or not sdist.is_file():
            raise PeerSkipped(f"{PACKAGE}=={VERSION} could not be downloaded: {_last_line(done.stderr)}")
    if not peer.source.is_dir():
        with tarfile.open(sdist) as archive:
            archive.extractall(peer.root, filter="data")
    jobs = os.cpu_count() or 1
    log(f"building llama.cpp from {peer.source} ({jobs} jobs; minutes); log: {peer.root / 'build.log'}")
    with open(peer.root / "build.log", "w") as out:
        for command in (configure_command(tools, peer), build_command(tools, peer, jobs)):
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise RuntimeError(f"building llama.cpp failed: see {peer.root / 'build.log'}")
    mark_built(peer, tools)
    return peer


def mark_built(peer: Peer, tools: Toolchain) -> None:
    """Write the marker last, so an interrupted build is never taken for a finished one."""
    marker = {
        "package": PACKAGE,
        "version": VERSION,
        "cmake_options": list(CMAKE_OPTIONS),
        "cmake": tools.cmake,
    }
    (peer.root / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
