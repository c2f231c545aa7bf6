"""`moeqos gateway`: the OpenAI-compatible HTTP service in front of the executors (moeqos.gateway).

Every flag also has a MOEQOS_GATEWAY_* environment variable (see moeqos.gateway.config); flags win.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the gateway command."""
    parser = subparsers.add_parser(
        "gateway",
        help="run the OpenAI-compatible HTTP gateway in front of executors",
        description="Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics. "
        "Model names are QoS classes, each routed to the least-loaded of its executors.",
    )
    parser.add_argument(
        "--route",
        action="append",
        metavar="MODEL=HOST:PORT[,...]",
        help="a model name (e.g. smollm2-moe8:fast) and the executors holding its target (repeatable)",
    )
    parser.add_argument(
        "--routes-file", metavar="JSON", help='routes as {"MODEL": ["HOST:PORT", ...]} (--route wins)'
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to bind (default 127.0.0.1:8000)")
    parser.add_argument("--token", help="bearer token required on /v1/* (default: MOEQOS_GATEWAY_TOKEN)")
    parser.add_argument("--executor-token", help="bearer token sent to the executors")
    parser.add_argument("--executor-tls-ca", metavar="PEM", help="CA to verify the executors with (TLS)")
    parser.add_argument(
        "--default-max-tokens", type=int, help="max_tokens of a chat request that gives none (default 256)"
    )
    parser.add_argument("--request-timeout", type=float, help="seconds one generation may take (default 600)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    """Build the config (exit 2 on a bad setting or a missing extra), then serve until a signal."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        from moeqos.gateway.config import GatewayConfig
        from moeqos.gateway.server import serve
    except ModuleNotFoundError as exc:
        print(f"moeqos gateway: {exc.name} is missing; install moeqos[gateway]", file=sys.stderr)
        return 2
    from moeqos.api.server import env

    try:
        config = GatewayConfig.from_env_and_args(args, env())
    except ValueError as exc:
        print(f"moeqos gateway: {exc}", file=sys.stderr)
        return 2
    try:
        serve(
            config,
            lambda port: print(
                f"moeqos gateway listening on http://{_host(config.listen)}:{port}", flush=True
            ),
        )
    except OSError as exc:
        print(f"moeqos gateway: cannot listen on {config.listen}: {exc}", file=sys.stderr)
        return 1
    return 0


def _host(listen: str) -> str:
    return listen.rpartition(":")[0]
