"""The gateway's config: routes from the environment, a file and flags (flags win), checked at start."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from moeqos.cli.main import build_parser
from moeqos.gateway.config import DEFAULT_LISTEN, GatewayConfig


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["gateway", *argv])


def test_routes_merge_env_then_file_then_flags(tmp_path: Path) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(json.dumps({"m:quality": ["h3:3"], "m:fast": ["h9:9"]}))
    env = {"MOEQOS_GATEWAY_ROUTES": "m:fast=h1:1,h2:2; m:batch=h4:4", "MOEQOS_GATEWAY_TOKEN": "t"}
    config = GatewayConfig.from_env_and_args(
        args("--routes-file", str(routes_file), "--route", "m:fast=h5:5"), env
    )
    assert config.routes == {"m:fast": ("h5:5",), "m:batch": ("h4:4",), "m:quality": ("h3:3",)}
    assert config.token == "t" and config.listen == DEFAULT_LISTEN == "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ((), {}, "at least one route"),
        (("--route", "m:fast"), {}, "MODEL=HOST:PORT"),
        (("--route", "m:fast=nohost"), {}, "host:port"),
        (("--route", "m:fast=h:1", "--listen", "8000"), {}, "listen address"),
        (("--route", "m:fast=h:1", "--token", " "), {}, "token"),
        (("--routes-file", "/no/such/file.json"), {}, "routes file"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_setting(
    argv: tuple[str, ...], env: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GatewayConfig.from_env_and_args(args(*argv), env)


def test_the_cli_refuses_a_bad_config_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from moeqos.cli.main import main

    assert main(["gateway", "--route", "m:fast"]) == 2
    assert "MODEL=HOST:PORT" in capsys.readouterr().err
