"""`moeqos demo` (the whole system on this machine, end to end) and `moeqos health ADDR` (a probe)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from moeqos.cli.client_cmds import add_tls_args, tls_options


def register(subparsers: Any) -> None:
    """Add the `demo` and `health` commands."""
    demo = subparsers.add_parser(
        "demo",
        help="start a planner, two executors and the gateway locally (as docker-compose.yml describes), "
        "deploy two QoS targets, stream from each, measure, plot the frontier, ask each QoS class a "
        "question through the OpenAI-compatible gateway, stop",
    )
    demo.add_argument("--out", type=Path, default=Path("out"), help="output directory (default: out)")
    demo.add_argument(
        "--compose", type=Path, help="compose file (default: the checkout's docker-compose.yml)"
    )
    demo.add_argument(
        "--model", type=Path, help="serve this checkpoint directory instead of the default model"
    )
    demo.add_argument("--prompt", default="The stock market today", help="prompt for both generations")
    demo.add_argument("--max-tokens", type=int, default=40, help="tokens to generate per executor")
    demo.add_argument(
        "--eval-tokens",
        type=int,
        default=1024,
        help="ptb:valid tokens for measured perplexity (the corpus the predictions are on)",
    )
    demo.add_argument(
        "--max-ppl-increase",
        type=float,
        help="speed target: perplexity ceiling over full precision (default: 15%% of it)",
    )
    demo.add_argument(
        "--min-tps",
        type=float,
        help="quality target: tokens/s floor (default: 15%% of the way from the most "
        "accurate plan's speed to the fastest plan's)",
    )
    demo.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for SERVING")
    demo.set_defaults(func=run_demo)

    health = subparsers.add_parser(
        "health",
        help="gRPC health check of a planner or executor, or HTTP of the gateway (exit 0: SERVING)",
    )
    health.add_argument("address", help="host:port (gRPC), or the gateway's http://HOST:PORT/health")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    health.add_argument("--wait", type=float, default=0.0, help="keep probing up to this many seconds")
    health.add_argument("--json", action="store_true", help="print {address, status} as JSON")
    add_tls_args(health)
    health.set_defaults(func=run_health)


def run_health(args: argparse.Namespace) -> int:
    """Probe once (or until SERVING within --wait seconds); exit 0 only when SERVING."""
    from moeqos.client import ConnectOptions
    from moeqos.client.base import SyncBase
    from moeqos.core.errors import MoeqosError
    from moeqos.demo.processes import http_health

    options = ConnectOptions(**tls_options(args))
    deadline = time.monotonic() + args.wait
    while True:
        try:
            if args.address.startswith(("http://", "https://")):
                status = http_health(args.address)
            else:
                with SyncBase(args.address, options) as probe:
                    status = probe.health(args.service, timeout=5.0)
        except MoeqosError as exc:
            status = f"UNAVAILABLE ({exc})"
        if status == "SERVING" or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    print(
        json.dumps({"address": args.address, "status": status}) if args.json else f"{args.address}: {status}"
    )
    return 0 if status == "SERVING" else 1


def run_demo(args: argparse.Namespace) -> int:
    """The main job; see `moeqos demo --help`. Exit 1 with a message (and the services' log) on failure."""
    from moeqos.core.errors import MoeqosError
    from moeqos.demo.processes import ServiceFailed
    from moeqos.demo.run import Clock, load_local
    from moeqos.demo.scenario import DemoSettings

    say = Clock()
    out_dir = args.out.resolve()
    services = load_local(args.compose, args.model)
    settings = DemoSettings(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        eval_tokens=args.eval_tokens,
        max_perplexity_increase=args.max_ppl_increase,
        min_tokens_per_s=args.min_tps,
    )
    say(f"moeqos demo: {len(services)} services from the compose file; their logs go to {out_dir / 'logs'}")
    try:
        report = _run(
            services, settings, out_dir, say, skip_jobs=bool(args.model), timeout=args.startup_timeout
        )
    except (ServiceFailed, MoeqosError) as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}\n(logs in {out_dir / 'logs'})", file=sys.stderr)
        return 1
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"done: plot {report['plot']}, report {out_dir / 'demo.json'}, logs {out_dir / 'logs'}")
    return 0


def _run(
    services: Any, settings: Any, out_dir: Path, say: Any, *, skip_jobs: bool, timeout: float
) -> dict[str, Any]:
    """Start the services, run the scenario against them, stop them (whatever happens)."""
    from moeqos.demo.processes import ServiceFailed
    from moeqos.demo.run import started_services
    from moeqos.demo.scenario import run_scenario

    with started_services(services, out_dir / "logs", say, skip_jobs=skip_jobs, timeout=timeout) as running:
        executors = {name: running.address(name) for name in running.names_running("executor")}
        planners = running.names_running("planner")
        if len(executors) < 2 or not planners:
            raise ServiceFailed(
                f"the demo needs a planner and two executors; the compose file has {sorted(running.services)}"
            )
        report = run_scenario(running.address(planners[0]), executors, settings, out_dir, say)
        if "gateway" in running.services:
            from moeqos.demo.gateway_step import ask_gateway

            report["gateway"] = ask_gateway(f"http://{running.address('gateway')}", say)
        return report
