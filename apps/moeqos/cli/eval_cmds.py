"""`moeqos eval`: perplexity and decode tokens/s of a model under a plan, on a named corpus."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from moeqos.core.corpora import REPORTING_CORPUS, TEXT_PREFIX, corpus_names, load_corpus, tokenize_prefix
from moeqos.core.errors import MoeqosError
from moeqos.core.plan import Plan, parse_plan, plan_text
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, expert_bytes
from moeqos.executor.default_model.location import resolve_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity and tokens/s of a model under a plan",
        description="Load the model under PLAN, score the first --max-tokens tokens of the corpus in "
        "non-overlapping windows of --context tokens, then time a greedy decode of exactly --decode-tokens "
        "tokens (end-of-sequence ignored, after one untimed warm-up run).",
    )
    parser.add_argument(
        "--plan", required=True, help="plan text (e.g. `int4`, `int4@cpu,L0-3.E*=bf16`) or @plan.json"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--corpus",
        default=REPORTING_CORPUS,
        help=f"corpus name: {', '.join(corpus_names())} or text:PATH (default: {REPORTING_CORPUS})",
    )
    source.add_argument("--text", type=Path, help="a plain-text file to score (same as --corpus text:FILE)")
    parser.add_argument(
        "--group-size",
        type=int,
        default=DEFAULT_GROUP_SIZE,
        help=f"weights per group of int4/int3/int2 for a text plan (default {DEFAULT_GROUP_SIZE})",
    )
    parser.add_argument("--model", help="model directory (default: the default model, built if needed)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens of the corpus to score")
    parser.add_argument("--context", type=int, default=512, help="tokens per scoring window")
    parser.add_argument(
        "--decode-tokens",
        type=int,
        default=32,
        help="tokens of greedy decode to time, generated past end-of-sequence (0: no decode)",
    )
    parser.add_argument("--device", default="cpu", help="execution device (cpu, cuda:0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        result = run_eval(args)
    except (MoeqosError, ValueError, OSError) as exc:  # bad plan, corpus, model dir, budget, range
        print(f"moeqos eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model       {result['model_dir']}")
    print(f"plan        {result['plan_summary']}")
    print(f"corpus      {result['measured_on']} (context {result['context']})")
    print(f"perplexity  {result['perplexity']:.3f}")
    if result["decode_tokens"]:
        print(
            f"tokens/s    {result['tokens_per_s']:.2f} (greedy decode of {result['decode_tokens']} tokens, "
            f"end-of-sequence ignored, after {result['decode_warmup_runs']} untimed warm-up run)"
        )
    print(f"seconds     {result['seconds']:.1f} evaluating, {result['load_seconds']:.1f} loading")
    return 0


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model under the plan and evaluate it; returns what `moeqos eval --json` prints."""
    from moeqos.executor.config import ExecutorConfig
    from moeqos.executor.generation import TIMED_DECODE_EOS, TIMED_DECODE_WARMUP_RUNS
    from moeqos.executor.runtime import ExecutorRuntime

    model_dir = resolve_model_dir(args.model)
    plan = read_plan(args.plan, model_dir, args.device, args.group_size)
    corpus = load_corpus(f"{TEXT_PREFIX}{args.text}" if args.text else args.corpus)
    started = time.perf_counter()
    runtime = ExecutorRuntime.load(ExecutorConfig(model_dir=model_dir, device=args.device), initial_plan=plan)
    load_seconds = time.perf_counter() - started
    if runtime.tokenizer is None:
        raise ValueError(f"{model_dir} has no tokenizer; eval needs one to tokenize {corpus.name}")
    tokens = tokenize_prefix(corpus, runtime.tokenizer, args.max_tokens)
    result = runtime.evaluate(
        list(tokens.token_ids), context_length=args.context, decode_tokens=args.decode_tokens
    )
    return {
        "model_dir": str(model_dir),
        "plan": plan.to_spec(),
        "plan_summary": plan.describe(),
        "expert_bytes_per_tier": plan.bytes_per_tier(_expert_bytes(model_dir, plan.group_size)),
        "corpus": corpus.name,
        "measured_on": tokens.describe(),
        "context": args.context,
        "perplexity": result.perplexity,
        "tokens_scored": result.tokens,
        "decode_tokens": result.decode_tokens,
        "decode_eos": TIMED_DECODE_EOS,
        "decode_warmup_runs": TIMED_DECODE_WARMUP_RUNS if result.decode_tokens else 0,
        "tokens_per_s": result.tokens_per_s,
        "seconds": result.seconds,
        "load_seconds": load_seconds,
        "device": args.device,
    }


def read_plan(text: str, model_dir: Path, device: str, group_size: int = DEFAULT_GROUP_SIZE) -> Plan:
    """A plan for the model in `model_dir` from its text form or `@file.json` (which carries its own
    group size); precisions given without a tier go to `device`."""
    layers, experts = _model_shape(model_dir)
    return parse_plan(plan_text(text), layers, experts, default_tier=device, group_size=group_size)


def _model_shape(model_dir: Path) -> tuple[int, int]:
    """(MoE layers, experts per layer with shared-expert slices) of any supported family."""
    from moeqos.executor.adapters import read_model

    spec = read_model(model_dir)[2]
    return spec.num_layers, spec.num_experts


def _expert_bytes(model_dir: Path, group_size: int) -> dict[Precision, int]:
    from moeqos.executor.adapters import read_model

    spec = read_model(model_dir)[2]
    return {p: expert_bytes(spec.hidden, spec.intermediate, p, group_size) for p in Precision}
