"""Read a Hugging Face checkpoint directory tensor by tensor, never all at once.

`Checkpoint` indexes the safetensors files (one file, or shards with `model.safetensors.index.json`),
checks every tensor it hands out against what the caller expects, and names the file and tensor in
every error. It also computes the model fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from moeqos.core.errors import InvalidArgument
from safetensors import SafetensorError, safe_open

INDEX_FILE = "model.safetensors.index.json"
SAMPLES = 16
SAMPLE_BYTES = 64 << 10
"""`Checkpoint.fingerprint` reads this many pieces of this many bytes of every file (first and last
included; a few MiB whatever the model's size): a fine-tune changes essentially every weight, so any
piece of tensor data tells it apart."""


class CheckpointError(InvalidArgument):
    """The checkpoint directory is missing, truncated, or lacks or misshapes a tensor."""


class Checkpoint:
    """A safetensors checkpoint directory: config, tensor index, on-demand tensor reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.config_path = self.directory / "config.json"
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.config_path}: no config.json, not a checkpoint directory")
        self.config_dict: dict[str, Any] = json.loads(self.config_path.read_text())
        self.files = self._find_files()
        self.index: dict[str, Path] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for path in self.files:
            self._index_file(path)

    def _find_files(self) -> list[Path]:
        index_path = self.directory / INDEX_FILE
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = sorted({self.directory / name for name in weight_map.values()})
        else:
            files = sorted(self.directory.glob("*.safetensors"))
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{path}: safetensors file listed in {INDEX_FILE} is missing")
        if not files:
            raise CheckpointError(f"{self.directory}: no safetensors files")
        return files

    def _index_file(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    sliced = handle.get_slice(key)
                    self.index[key] = path
                    self.meta[key] = (tuple(sliced.get_shape()), str(sliced.get_dtype()))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc}){_cut_tensor(path)}") from exc

    def check(self, key: str, shape: tuple[int, ...] | None = None) -> Path:
        """The file holding `key`; CheckpointError if it is missing or (given `shape`) misshapen."""
        if key not in self.index:
            raise CheckpointError(f"{self.directory}: tensor {key!r} is missing from the checkpoint")
        path = self.index[key]
        if shape is not None and self.meta[key][0] != tuple(shape):
            found = list(self.meta[key][0])
            raise CheckpointError(f"{path}: tensor {key!r} has shape {found}, expected {list(shape)}")
        return path

    def read(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """One tensor, on the CPU in its stored dtype; checks presence, shape and readability."""
        path = self.check(key, shape)
        try:
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot read tensor {key!r} ({exc})") from exc

    def read_slice(self, key: str, shape: tuple[int, ...], index: tuple[slice, ...]) -> torch.Tensor:
        """The part `index` of a tensor checked to have `shape`, read without reading the rest (one
        expert of a fused [E, ...] tensor, some rows of a shared expert)."""
        path = self.check(key, shape)
        try:
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_slice(key)[index]
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot read tensor {key!r} ({exc})") from exc

    def fingerprint(self) -> str:
        """sha256 of config.json, every tensor's name/shape/dtype, every file's size, and SAMPLES evenly
        spaced SAMPLE_BYTES-byte pieces of every file. Without the pieces, two fine-tunes of one base
        (one config, names, shapes and sizes) or a checkpoint rewritten in place had one fingerprint,
        and what is kept per fingerprint (the variant cache directory, the saved profile and state) was
        the other model's: a shared variant cache computed with the other's experts."""
        digest = hashlib.sha256(self.config_path.read_bytes())
        for key in sorted(self.meta):
            shape, dtype = self.meta[key]
            digest.update(f"{key}:{list(shape)}:{dtype}\n".encode())
        for path in self.files:
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}\n".encode())
            with path.open("rb") as handle:
                for i in range(SAMPLES):
                    handle.seek(max(size - SAMPLE_BYTES, 0) * i // (SAMPLES - 1))
                    digest.update(handle.read(SAMPLE_BYTES))
        return digest.hexdigest()


def _cut_tensor(path: Path) -> str:
    """`; the file ends inside tensor 'NAME'` when the header reads but the data stops short (a truncated
    file), so the error names the first tensor lost; '' otherwise."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        available = path.stat().st_size - 8 - length
        cut = min(
            (entry["data_offsets"][0], name)
            for name, entry in header.items()
            if name != "__metadata__" and entry["data_offsets"][1] > available
        )
    except (OSError, ValueError, KeyError, TypeError):  # unreadable header, or nothing is cut
        return ""
    return f"; the file ends inside tensor {cut[1]!r}"
