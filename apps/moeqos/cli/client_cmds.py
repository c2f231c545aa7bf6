"""Client commands over the services: `generate`, `deploy`, `status`, `apply`, `set-budget`, `profile`.

Torch-free (they use the sync clients). Every command has `--json`; connection flags (`--token`,
`--tls-ca`, ...) fall back to MOEQOS_* environment variables, read in `connect_options` only. Calls
that may take a while (deploy, apply, waiting for SERVING) show a heartbeat on stderr; errors propagate
to `moeqos.cli.guard`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from moeqos.cli import client_output as out
from moeqos.core.errors import InvalidArgument
from moeqos.core.progress import waiting
from moeqos.core.qos import Objective, QosTarget

DEFAULT_EXECUTOR = "127.0.0.1:50061"
DEFAULT_PLANNER = "127.0.0.1:50051"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the client commands."""
    generate = _command(subparsers, "generate", "stream a completion from an executor", cmd_generate)
    _executor_arg(generate)
    generate.add_argument("prompt", help="prompt text")
    generate.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    generate.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]")
    generate.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    generate.add_argument("--seed", type=int, help="random seed")
    generate.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")

    deploy = _command(
        subparsers, "deploy", "plan for and apply to executors, each with its target", cmd_deploy
    )
    deploy.add_argument(
        "--planner", metavar="ADDR", help=f"planner (default $MOEQOS_PLANNER or {DEFAULT_PLANNER})"
    )
    deploy.add_argument("--planner-address", default="", help="address executors should reach the planner at")
    deploy.add_argument(
        "--executor", action=_NewDeployTarget, metavar="ADDR", help="an executor; its target follows"
    )
    for flag, help_text in (
        ("--min-tps", "throughput floor, tokens/s"),
        ("--max-ppl", "perplexity ceiling"),
        ("--max-ppl-increase", "ceiling as an increase over full precision"),
    ):
        deploy.add_argument(
            flag, action=_TargetField, type=float, help=f"{help_text} (for the last --executor)"
        )
    deploy.add_argument("--objective", action=_TargetField, choices=[o.value for o in Objective])
    deploy.add_argument(
        "--budget", action=_TargetField, type=budget_arg, metavar="TIER=SIZE", help="plan budget"
    )
    deploy.add_argument("--pin", action=_TargetField, type=_pin, metavar="RULE", help="e.g. L0.E*=bf16@cpu")
    deploy.add_argument(
        "--concurrency",
        action=_TargetField,
        type=int,
        metavar="N",
        help="streams the floor holds for each (default: the executor's active generations)",
    )

    status = _command(
        subparsers, "status", "table of executors, their plans, budgets and targets", cmd_status
    )
    status.add_argument("--executor", action="append", required=True, metavar="ADDR", help="repeatable")

    apply = _command(subparsers, "apply", "apply a plan to an executor", cmd_apply)
    _executor_arg(apply)
    apply.add_argument("--plan", required=True, help="plan text (int4@cpu,L0.E*=bf16), JSON, or @FILE")

    budget = _command(subparsers, "set-budget", "change a tier's budget on an executor", cmd_set_budget)
    _executor_arg(budget)
    budget.add_argument("budget", type=budget_arg, metavar="TIER=SIZE", help="e.g. cpu=1GiB")

    profile = _command(
        subparsers, "profile", "measure an executor's profile again (progress bar)", cmd_profile
    )
    _executor_arg(profile)
    profile.add_argument("--corpus", default="", help="calibration corpus, e.g. ptb:train")
    profile.add_argument(
        "--tokens", type=int, default=0, help="calibration tokens (0: the executor's default)"
    )
    profile.add_argument("--quality", action="store_true", help="also measure reference perplexities")
    profile.add_argument("--out", help="write the profile JSON here (default: stdout)")


# ----- arguments ----------------------------------------------------------------------------------
def _command(subparsers: argparse._SubParsersAction, name: str, help_text: str, func: Any) -> Any:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print JSON (JSON lines for streams)")
    add_connection_args(parser)
    parser.set_defaults(func=func)
    return parser


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """The flags `connect_options` reads: token, TLS files, deadline, wait for SERVING."""
    parser.add_argument("--token", help="bearer token (default: $MOEQOS_TOKEN)")
    add_tls_args(parser)
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of unary calls in seconds")
    parser.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the servers to report SERVING (e.g. an executor loading)",
    )


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    """The TLS flags `tls_options` reads."""
    parser.add_argument(
        "--tls-ca", help="PEM CA to verify servers with; enables TLS (default: $MOEQOS_TLS_CA)"
    )
    parser.add_argument("--tls-cert", help="PEM client certificate, for mutual TLS")
    parser.add_argument("--tls-key", help="PEM client key, for mutual TLS")


def _executor_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor", metavar="ADDR", help=f"executor (default $MOEQOS_EXECUTOR or {DEFAULT_EXECUTOR})"
    )


def budget_arg(text: str) -> Any:
    """argparse type of a `TIER=SIZE` budget (e.g. `cpu=2GiB`)."""
    from moeqos.core.units import parse_budget

    try:
        return parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pin(text: str) -> Any:
    from moeqos.core.rules import PlacementRule

    try:
        return PlacementRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _NewDeployTarget(argparse.Action):
    """`--executor ADDR` opens a new deploy target; target flags after it belong to it."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        targets = list(getattr(namespace, "targets", None) or [])
        targets.append({"executor": value, "budget": [], "pin": []})
        namespace.targets = targets


class _TargetField(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        targets = getattr(namespace, "targets", None)
        if not targets:
            parser.error(f"{option} must follow an --executor ADDR")
            return
        field = self.dest
        if field in ("budget", "pin"):
            targets[-1][field].append(value)
        else:
            targets[-1][field] = value


def executor_address(args: argparse.Namespace) -> str:
    return str(args.executor or os.environ.get("MOEQOS_EXECUTOR") or DEFAULT_EXECUTOR)


def planner_address(args: argparse.Namespace) -> str:
    return str(args.planner or os.environ.get("MOEQOS_PLANNER") or DEFAULT_PLANNER)


def connect_options(args: argparse.Namespace) -> Any:
    """ConnectOptions from the flags, falling back to MOEQOS_TOKEN / MOEQOS_TLS_CA."""
    from moeqos.client import ConnectOptions

    token = args.token or os.environ.get("MOEQOS_TOKEN") or None
    return ConnectOptions(token=token, timeout=args.timeout, **tls_options(args))


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """ConnectOptions' TLS fields from `add_tls_args` flags, the CA falling back to MOEQOS_TLS_CA."""
    from pathlib import Path

    ca = args.tls_ca or os.environ.get("MOEQOS_TLS_CA")
    return {
        "tls_ca": Path(ca) if ca else None,
        "tls_cert": Path(args.tls_cert) if args.tls_cert else None,
        "tls_key": Path(args.tls_key) if args.tls_key else None,
    }


# ----- commands -----------------------------------------------------------------------------------
def executor_client(args: argparse.Namespace, address: str | None = None) -> Any:
    """A connected ExecutorClient, after waiting for SERVING when `--wait-ready` asks to."""
    from moeqos.client import ExecutorClient

    client = ExecutorClient(address or executor_address(args), connect_options(args))
    return _ready(client, args.wait_ready)


def planner_client(args: argparse.Namespace) -> Any:
    from moeqos.client import PlannerClient

    return _ready(PlannerClient(planner_address(args), connect_options(args)), args.wait_ready)


def _ready(client: Any, wait: float) -> Any:
    if wait > 0:
        try:
            with waiting(f"waiting for {client.address} to report SERVING"):
                client.wait_until_serving(wait)
        except BaseException:
            client.close()
            raise
    return client


def cmd_generate(args: argparse.Namespace) -> int:
    from moeqos.client import Sampling

    sampling = Sampling(
        args.max_tokens, args.temperature, args.top_p, args.top_k, args.seed, tuple(args.stop)
    )
    with executor_client(args) as executor:
        return out.stream(executor.generate(args.prompt, sampling), args.json)


def cmd_deploy(args: argparse.Namespace) -> int:
    from moeqos.client import DeploySpec

    targets = getattr(args, "targets", None) or []
    if not targets:
        raise InvalidArgument("give at least one --executor ADDR with a target")
    specs = [
        DeploySpec(t["executor"], _target(t), tuple(t["budget"]), tuple(t["pin"]), t.get("concurrency", 0))
        for t in targets
    ]
    for spec in specs:
        executor_client(args, spec.executor_address).close()  # waits for it with --wait-ready
    with planner_client(args) as planner, waiting(f"deploying to {len(specs)} executor(s)"):
        outcomes = planner.deploy(specs, args.planner_address)
    return out.deployed(outcomes, args.json)


def _target(fields: dict[str, Any]) -> QosTarget:
    return QosTarget(
        fields.get("min_tps"),
        fields.get("max_ppl"),
        fields.get("max_ppl_increase"),
        Objective(fields["objective"]) if fields.get("objective") else None,
    )


def cmd_status(args: argparse.Namespace) -> int:
    infos = []
    for address in args.executor:
        with executor_client(args, address) as executor:
            infos.append((address, executor.info()))
    return out.status(infos, args.json)


def cmd_apply(args: argparse.Namespace) -> int:
    from moeqos.core.plan import parse_plan, plan_text

    text = plan_text(args.plan)
    with executor_client(args) as executor:
        info = executor.info()
        plan = parse_plan(text, info.model.num_layers, info.model.num_experts, info.hardware.device)
        with waiting("applying the plan"):
            report = executor.apply_plan(plan, timeout=None)
    return out.applied(plan, report, args.json)


def cmd_set_budget(args: argparse.Namespace) -> int:
    with executor_client(args) as executor, waiting("setting the budget"):
        outcome = executor.set_budget(args.budget.name, args.budget.budget_bytes)
    return out.budget(outcome, args.json)


def cmd_profile(args: argparse.Namespace) -> int:
    with executor_client(args) as executor:
        return out.profile(
            executor.measure_profile(args.corpus, args.tokens, args.quality), args.out, args.json
        )
