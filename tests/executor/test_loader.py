"""Loading checkpoints: the fp32 plan reproduces transformers, and broken checkpoints fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from moeqos.core.precision import Precision
from moeqos.executor.checkpoint import Checkpoint, CheckpointError
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.runtime import ExecutorRuntime
from safetensors.torch import load_file, save_file

from tests.executor.tiny import fp32_plan, prompt_ids


def test_fp32_plan_reproduces_transformers_logits(runtime, reference_model) -> None:
    ids = prompt_ids(24)
    with torch.no_grad():
        expected = reference_model(ids).logits  # [1, S, V]
    got = runtime.forward_logits(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_router_is_fp32_and_experts_are_not_model_parameters(make_runtime) -> None:
    runtime = make_runtime(dense_precision="bf16")
    names = {n: p.dtype for n, p in runtime.lm.named_parameters()}
    routers = [d for n, d in names.items() if ".router." in n]
    assert routers and all(d == torch.float32 for d in routers)
    assert names["model.embed_tokens.weight"] == torch.bfloat16
    assert not any("experts" in n for n in names)


def test_identity_and_fingerprint(runtime, tiny_dir: Path, tmp_path: Path) -> None:
    model = runtime.model
    assert (model.num_layers, model.num_experts, model.top_k, model.hidden_size) == (2, 4, 2, 64)
    assert model.fingerprint == Checkpoint(tiny_dir).fingerprint()
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "copy"))
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (copy / "config.json").write_text(json.dumps(config))
    assert Checkpoint(copy).fingerprint() != model.fingerprint


def test_sharded_checkpoint_loads_the_same(runtime, tiny_dir: Path, tmp_path: Path) -> None:
    shard_dir = _shard(tiny_dir, tmp_path / "sharded")
    sharded = ExecutorRuntime.load(
        ExecutorConfig(model_dir=shard_dir, dense_precision=Precision.FP32), fp32_plan()
    )
    ids = prompt_ids(10)
    torch.testing.assert_close(sharded.forward_logits(ids), runtime.forward_logits(ids))


def _shard(source: Path, target: Path) -> Path:
    """Split model.safetensors into two shards with an index, as large checkpoints come."""
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    tensors = load_file(str(source / "model.safetensors"))
    keys = sorted(tensors)
    weight_map = {}
    for part, chunk in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"model-0000{part + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in chunk}, str(target / name))
        weight_map.update(dict.fromkeys(chunk, name))
    (target / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return target


def _broken(tiny_dir: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "broken"))
    edit(copy / "model.safetensors")
    return copy


def _drop(key: str):
    def edit(path: Path) -> None:
        tensors = load_file(str(path))
        del tensors[key]
        save_file(tensors, str(path))

    return edit


def _reshape(key: str):
    def edit(path: Path) -> None:
        tensors = load_file(str(path))
        tensors[key] = tensors[key][:, :-1].contiguous()
        save_file(tensors, str(path))

    return edit


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


EXPERT_KEY = "model.layers.1.block_sparse_moe.experts.2.w3.weight"


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (_truncate, "model.safetensors"),
        (_drop("model.layers.0.self_attn.q_proj.weight"), "model.layers.0.self_attn.q_proj.weight"),
        (_drop(EXPERT_KEY), EXPERT_KEY),
        (_reshape(EXPERT_KEY), EXPERT_KEY),
        (
            _reshape("model.layers.1.block_sparse_moe.gate.weight"),
            "model.layers.1.block_sparse_moe.gate.weight",
        ),
    ],
    ids=["truncated", "missing-dense", "missing-expert", "wrong-shape-expert", "wrong-shape-router"],
)
def test_broken_checkpoint_names_file_and_tensor(tiny_dir: Path, tmp_path: Path, edit, needle: str) -> None:
    broken = _broken(tiny_dir, tmp_path, edit)
    with pytest.raises(CheckpointError, match=needle.replace(".", r"\.")):
        ExecutorRuntime.load(ExecutorConfig(model_dir=broken, dense_precision=Precision.FP32), fp32_plan())


def test_missing_directory_and_shard_fail_clearly(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        Checkpoint(tmp_path / "nowhere")
    shard_dir = _shard(tiny_dir, tmp_path / "sharded")
    (shard_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors"):
        Checkpoint(shard_dir)
