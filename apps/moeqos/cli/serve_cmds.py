"""`moeqos planner` and `moeqos executor`: run the servers. Flags mirror the config dataclasses
(moeqos.planner.server.PlannerServerConfig, moeqos.executor.server.ExecutorServerConfig); every flag also has a
MOEQOS_* environment variable, read in the config's `from_env_and_args`, and flags win.

Once bound, each server prints one line `listening on HOST:PORT` (a JSON object with `--json`) so
scripts that ask for port 0 learn the port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from moeqos.cli.client_cmds import budget_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the planner and executor serve commands."""
    planner = subparsers.add_parser("planner", help="run the planner service (no torch)")
    _common(planner, "127.0.0.1:50051")
    planner.add_argument("--advertise", metavar="ADDR", help="address executors reach this planner at")
    planner.add_argument("--workers", type=int, help="solver threads (default 2)")
    planner.add_argument(
        "--executor-allow",
        action="append",
        metavar="HOST:PORT",
        help="an executor address callers may name (repeatable; default: any)",
    )
    planner.set_defaults(func=cmd_planner)

    executor = subparsers.add_parser("executor", help="run the executor service for one model")
    _common(executor, "127.0.0.1:50061")
    executor.add_argument(
        "--model", metavar="DIR", help="model directory (default: the embedded default model)"
    )
    executor.add_argument("--device", help="execution device: cpu, cuda:0 (default cpu)")
    executor.add_argument(
        "--budget",
        action="append",
        type=budget_arg,
        metavar="TIER=SIZE",
        help="expert budget of a tier, e.g. cpu=2GiB (repeatable; default: the tier's physical size)",
    )
    executor.add_argument("--disk-slots", type=int, help="slots of the disk tier's pool (default 8)")
    executor.add_argument(
        "--disk-reads",
        choices=["cached", "uncached"],
        help="uncached: drop disk-tier expert files from the OS page cache after each read (default cached)",
    )
    executor.add_argument(
        "--planner", metavar="ADDR", help="planner to ask for a new plan when budgets change"
    )
    executor.add_argument("--dense-precision", choices=["fp32", "bf16", "fp16"], help="non-expert weights")
    executor.add_argument(
        "--initial-plan", metavar="PLAN", help="plan to serve first, e.g. int4@cpu,L0.E*=bf16"
    )
    executor.add_argument("--name", help="name reported by GetInfo (default: the host name)")
    executor.add_argument(
        "--max-concurrent", type=int, help="generations decoded together: the batch size (default 16)"
    )
    executor.add_argument("--max-queued", type=int, help="generations waiting; more are refused (default 16)")
    executor.add_argument(
        "--max-tokens-in-flight",
        type=int,
        help="KV tokens (prompt + max_tokens) the running generations reserve at most (default 65536)",
    )
    executor.add_argument("--threads", type=int, help="torch threads")
    executor.add_argument("--variant-cache", metavar="DIR", help="where quantized expert variants are kept")
    executor.add_argument(
        "--profile-path",
        metavar="FILE",
        help="profile JSON saved after measuring, reused at restart if it matches",
    )
    executor.add_argument(
        "--profile-at-start",
        action="store_true",
        default=None,
        help="measure the profile (unless --profile-path holds a matching one) before reporting SERVING",
    )
    executor.add_argument(
        "--qos-loop",
        choices=["on", "off"],
        help="on: measure decode steps, recalibrate the profile and re-plan to hold a standing floor; "
        "off: plan once from the measured profile (open loop). Default on",
    )
    executor.add_argument(
        "--qos-threads",
        choices=["on", "off"],
        help="on: while the loop holds a floor, it also sets torch's thread count from the cores other "
        "processes keep busy; off: the plan is its only actuator. Default on",
    )
    executor.add_argument(
        "--warm-variants",
        choices=["on", "off"],
        help="on: once serving and profiled, build the profile's quantized variants on disk at low "
        "priority, so plan switches read them instead of quantizing; off: on first use. Default on",
    )
    executor.add_argument(
        "--state-path",
        metavar="FILE",
        help="plan, budgets and standing target saved after each change and restored at start",
    )
    executor.add_argument(
        "--write-window",
        type=float,
        metavar="SECONDS",
        help="how long a stream's reader may leave a message unread before it is cancelled (default 30)",
    )
    executor.set_defaults(func=cmd_executor)


def _common(parser: argparse.ArgumentParser, listen: str) -> None:
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to bind (default {listen}; port 0: any)"
    )
    parser.add_argument("--token", help="bearer token required on state-changing calls")
    parser.add_argument(
        "--auth-read", action="store_true", default=None, help="require the token on reads too"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="server private key")
    parser.add_argument("--tls-client-ca", metavar="PEM", help="CA for client certificates (mutual TLS)")
    parser.add_argument("--max-message-bytes", type=int, help="largest message (default 64 MiB)")
    parser.add_argument("--grace-seconds", type=float, help="shutdown grace for calls in flight (default 10)")
    parser.add_argument("--peer-token", help="token for calls to the other service (default: --token)")
    parser.add_argument(
        "--peer-tls-ca", metavar="PEM", help="CA to verify the other service with (enables TLS)"
    )
    parser.add_argument(
        "--peer-tls-cert", metavar="PEM", help="client certificate for the other service (mutual TLS)"
    )
    parser.add_argument("--peer-tls-key", metavar="PEM", help="private key of --peer-tls-cert")
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics over HTTP here, e.g. 127.0.0.1:9461 (default: off)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--json", action="store_true", help="print the listening line as JSON")


def _announcer(args: argparse.Namespace, service: str, listen: str) -> Any:
    def announce(port: int) -> None:
        host = listen.rpartition(":")[0]
        if args.json:
            print(json.dumps({"service": service, "listening": f"{host}:{port}", "port": port}), flush=True)
        else:
            print(f"moeqos {service} listening on {host}:{port}", flush=True)

    return announce


def cmd_planner(args: argparse.Namespace) -> int:
    from moeqos.planner.server import PlannerServerConfig, serve

    return _serve(args, "planner", PlannerServerConfig, serve)


def cmd_executor(args: argparse.Namespace) -> int:
    from moeqos.executor.server import ExecutorServerConfig, serve

    return _serve(args, "executor", ExecutorServerConfig, serve)


def _serve(args: argparse.Namespace, service: str, config_class: Any, serve: Any) -> int:
    """Build the config, then serve until a signal. A bad setting raises ValueError before anything
    starts and a port in use OSError; `moeqos.cli.guard` turns them into exit codes 2 and 1."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = config_class.from_env_and_args(args)
    asyncio.run(serve(config, _announcer(args, service, config.listen)))
    return 0
