"""The light client: `pip install moeqos` (no extras) must be enough for the clients and the CLI's client
commands, so other services can depend on it without torch, numpy or scipy."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEAVY = ("torch", "transformers", "numpy", "scipy", "yaml")

_BLOCKED_RUN = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError("light client must not import " + name)
sys.meta_path.insert(0, Block())
from moeqos.client import AsyncExecutorClient, ExecutorClient, PlannerClient
from moeqos.api.codec import common as codec
from moeqos.core.plan import parse_plan
plan = parse_plan("int4@cpu", 2, 3, "cpu")
assert codec.plan_from_proto(codec.plan_to_proto(plan)) == plan
ExecutorClient("127.0.0.1:1").close()
PlannerClient("127.0.0.1:1").close()
from moeqos.cli.main import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
"""


def test_base_dependencies_are_the_light_client() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert not [name for name in HEAVY if name in base], base
    assert "scipy" in " ".join(project["optional-dependencies"]["planner"])
    assert "torch" in " ".join(project["optional-dependencies"]["executor"])


def test_clients_codec_and_cli_import_without_torch_numpy_or_scipy() -> None:
    code = _BLOCKED_RUN.format(heavy=set(HEAVY))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
