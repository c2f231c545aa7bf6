"""What the sections share in one run: the model, one executor, its profile, fitted models, frontier,
and every measurement taken so far (so a plan measured by one section is not measured again).

Everything expensive is computed on first use, so `--only baseline` profiles (it needs the knee)
but does not measure the frontier's plans.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from moeqos.bench.report import Machine
from moeqos.bench.settings import Settings
from moeqos.core.plan import Plan
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision

DEVICE = "cpu"
"""The execution device; experts not on disk live here."""
FITTING_PRECISIONS = (
    Precision.BF16,
    Precision.INT8,
    Precision.INT4_G32,
    Precision.INT4,
    Precision.INT3,
    Precision.INT2,
)
"""Uniform fitting plans; the mixed fitting plans are built from these (see `fitting_plans`). The
frontier is restricted to them too: the quality model is fitted for these precisions only (fp32 and fp16
cost more than the bf16 reference and gain nothing on it). int4 with groups of 32 and 64, and the
bit-packed int3 and int2, so the frontier shows the group-size and sub-4-bit choices (issues 20, 18);
not int4g128, whose groups do not divide the default model's hidden 576 (a dequantize fallback)."""
DISK_READS = "uncached"
"""How the executor reads disk-tier experts (ExecutorConfig.disk_reads): the `tiers` and `offload`
sections model RAM that cannot hold every expert, so a miss must not be served from the page cache."""
PROMPT_TOKENS = 48
"""Tokens of ptb:test text that open every decode-speed measurement's prompt."""


@dataclass(frozen=True)
class Speed:
    """Median decode speed of one plan (tokens after the first / seconds after the first)."""

    tokens_per_s: float
    samples: tuple[float, ...]
    tokens: int
    """Tokens generated per run."""

    def to_dict(self) -> dict[str, Any]:
        return {"tokens_per_s": self.tokens_per_s, "samples": list(self.samples), "tokens": self.tokens}


class BenchContext:
    """Shared state of one benchmark run (see module docstring)."""

    def __init__(
        self,
        model_dir: Path,
        settings: Settings,
        out_dir: Path,
        command: str,
        profile_path: Path | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.profile_path = profile_path
        """A saved profile to use instead of measuring one (`--profile`); None: measure."""
        self.settings = settings
        self.out_dir = out_dir
        self.command = command
        self.config = json.loads((model_dir / "config.json").read_text())
        self.speeds: dict[str, Speed] = {}
        self.perplexities: dict[str, Any] = {}
        self.halves: dict[str, tuple[float, float]] = {}
        """Per plan spec, the log perplexity of each half of `test_ids` (the quality section measures its
        plans by halves, to show how far the measurement agrees with itself)."""
        self.load_seconds = 0.0
        self.frontier_seconds = 0.0
        self.device = DEVICE
        self.profile_stages: dict[str, float] = {}
        """Seconds of each profiling stage (frequency, quant_error, call_costs, ..., quality)."""
        self._started = time.perf_counter()
        self._stage_clock = self._started

    def log(self, message: str) -> None:
        """A progress line on stderr (a full run takes minutes), with seconds since the run began."""
        print(f"[bench {time.perf_counter() - self._started:7.1f} s] {message}", file=sys.stderr, flush=True)

    def _profile_progress(self, stage: str, fraction: float) -> None:
        now = time.perf_counter()
        self.profile_stages[stage] = self.profile_stages.get(stage, 0.0) + now - self._stage_clock
        self._stage_clock = now
        if fraction >= 1.0:
            self.log(f"profile: {stage} done ({self.profile_stages[stage]:.1f} s)")

    @classmethod
    def create(
        cls,
        model: Path | None,
        settings: Settings,
        out_dir: Path,
        command: str,
        profile_path: Path | None = None,
    ) -> BenchContext:
        """A context for `model` (default: the default model, built if missing)."""
        from moeqos.executor.default_model.location import resolve_model_dir

        return cls(resolve_model_dir(model), settings, out_dir, command, profile_path)

    # ----- identity -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(layers, experts) of the model."""
        return int(self.config["num_hidden_layers"]), int(self.config["num_local_experts"])

    def machine(self) -> Machine:
        import torch

        return Machine.detect(torch.get_num_threads())

    def machine_dict(self) -> dict[str, Any]:
        m = self.machine()
        return {"cpu": m.cpu, "cpus": m.cpus, "torch_threads": m.threads, "host": m.host}

    def header(self) -> str:
        """Machine, command, and the group size behind every quality figure (issue 20)."""
        groups = (
            f"quantization: RTN; int4/int3/int2 in groups of {DEFAULT_GROUP_SIZE} weights, "
            "int4g32/int4g128/... in the groups their names say"
        )
        return f"machine: {self.machine().describe()}\ncommand: {self.command}\n{groups}"

    def model_summary(self) -> dict[str, Any]:
        layers, experts = self.shape
        return {
            "dir": str(self.model_dir),
            "layers": layers,
            "experts": experts,
            "top_k": int(self.config.get("num_experts_per_tok", 2)),
        }

    # ----- plans ----------------------------------------------------------------------------------
    def uniform(self, precision: Precision, tier: str = DEVICE) -> Plan:
        return Plan.uniform(*self.shape, precision, tier)

    @cached_property
    def full_precision(self) -> Plan:
        """The quality reference: every expert in bf16 on the device."""
        return self.uniform(Precision.BF16)

    @cached_property
    def fitting_labels(self) -> dict[str, str]:
        """Plan spec -> the short rule text it was made from, for the fitting plans."""
        from moeqos.core.plan import parse_plan

        layers, _ = self.shape
        half = f"0-{max(layers // 2 - 1, 0)}"
        texts = [f"{p.value}@{DEVICE}" for p in FITTING_PRECISIONS]
        texts += [
            f"int4@{DEVICE},L{half}.E*=int8",
            f"int8@{DEVICE},L*.E0+1=int3",
            f"int3@{DEVICE},L{half}.E*=bf16",
        ]
        return {parse_plan(t, *self.shape, DEVICE).to_spec(): t for t in texts}

    @cached_property
    def fitting_plans(self) -> list[Plan]:
        """Plans the quality model is fitted to: uniform FITTING_PRECISIONS and three mixes."""
        from moeqos.core.plan import parse_plan

        return [parse_plan(spec, *self.shape, DEVICE) for spec in self.fitting_labels]

    @cached_property
    def uniform_int4(self) -> Plan:
        return self.uniform(Precision.INT4)

    def reference_plans(self, include_knee: bool) -> list[tuple[str, Plan]]:
        """(name, plan) for all-bf16, all-int8, all-int4 and, if asked, the frontier's knee."""
        named = [
            (f"all-{p.value}", self.uniform(p)) for p in (Precision.BF16, Precision.INT8, Precision.INT4)
        ]
        return [*named, ("knee", self.knee.plan)] if include_knee else named

    # ----- the executor and its inputs ------------------------------------------------------------
    @cached_property
    def runtime(self) -> Any:
        """The executor, loaded once with every expert bf16 on the device (load time kept)."""
        self.log(f"loading {self.model_dir}")
        self.load_seconds, runtime = self.time_load()
        return runtime

    def time_load(self, plan: Plan | None = None) -> tuple[float, Any]:
        """Seconds of one `ExecutorRuntime.load` into `plan` (default: full precision), and the runtime."""
        from moeqos.executor.config import ExecutorConfig
        from moeqos.executor.runtime import ExecutorRuntime

        config = ExecutorConfig(
            self.model_dir, device=DEVICE, dense_precision=Precision.BF16, disk_reads=DISK_READS
        )
        start = time.perf_counter()
        runtime = ExecutorRuntime.load(config, plan or self.full_precision)
        return time.perf_counter() - start, runtime

    def tokens(self, corpus: str, count: int) -> list[int]:
        """The first `count` tokens of `corpus` in the model's tokenizer.

        A checkpoint without a tokenizer (the tiny random test models) gets one token per word, a
        stable hash of the word into the vocabulary: the text's statistics, not its meaning.
        """
        from moeqos.core.corpora import load_corpus, tokenize_prefix

        text = load_corpus(corpus)
        if self.runtime.tokenizer is not None:
            return list(tokenize_prefix(text, self.runtime.tokenizer, count).token_ids)
        vocab = int(self.config["vocab_size"])
        return [zlib.crc32(word.encode()) % vocab for word in text.text.split()[:count]]

    @cached_property
    def prompt_ids(self) -> list[int]:
        """The decode prompt: the opening of ptb:test, the same for every engine and plan."""
        return self.tokens("ptb:test", PROMPT_TOKENS)

    # ----- profile, cost models, frontier ---------------------------------------------------------
    @cached_property
    def profile(self) -> Any:
        """The executor's profile: ptb:train calibration, perplexity of the fitting plans on the
        ptb:test tokens the held-out plans are measured on (so the quality model's error on them is its
        error on plans it has not seen, not a change of text; see `valid_quality`)."""
        if self.profile_path is not None:
            return self.saved_profile(self.profile_path)
        s = self.settings
        calibration = self.tokens("ptb:train", s.calibration_tokens)
        self._stage_clock = time.perf_counter()
        return self.runtime.profile(
            calibration,
            "ptb:train",
            max_tokens=s.calibration_tokens,
            window=s.context_length,
            quality_plans=self.fitting_plans,
            quality_ids=self.test_ids,
            quality_corpus="ptb:test",
            progress=self._profile_progress,
        )

    def saved_profile(self, path: Path) -> Any:
        """The profile saved at `path`, refused (ValueError) unless measured on this model and device.
        It is used as saved: a disk tier measured with other settings keeps its own disk costs."""
        from moeqos.core.profile import Profile

        profile = Profile.from_json(Path(path).read_text())
        saved = (profile.model.fingerprint, profile.hardware.device)
        here = (self.runtime.model.fingerprint, self.runtime.hardware.device)
        if saved != here:
            raise ValueError(f"profile {path} was measured on model/device {saved}, this run is on {here}")
        self.log(f"profile: read from {path} (not measured)")
        return profile

    @cached_property
    def valid_quality(self) -> Any:
        """The quality model fitted instead to the fitting plans' perplexity on ptb:valid (`fit_tokens`
        tokens), with the layers and loud layers' experts measured alone on those tokens too (the
        profile measured them on its quality text, ptb:test, and they shape the signal and join the
        fit): how well predictions carry over to text the fit never saw."""
        from moeqos.core.profile import QualityPoint
        from moeqos.executor.profiling import measure_alone
        from moeqos.planner.quality_model import QualityModel

        ids = self.tokens("ptb:valid", self.settings.fit_tokens)
        points = []
        for plan in self.fitting_plans:
            self.log(f"ptb:valid perplexity of {plan.describe()}")
            result = self.runtime.evaluate(
                ids, plan, context_length=self.settings.context_length, decode_tokens=0
            )
            points.append(QualityPoint(plan.to_spec(), result.perplexity, "ptb:valid", result.tokens))
        self.log("ptb:valid: layers and loud layers' experts alone")
        reference = self.full_precision[0, 0].precision  # a uniform plan: every expert's precision
        alone = measure_alone(
            self.runtime, ids, self.settings.context_length, reference, self.profile.layer_kl, _quiet
        )
        valid = dataclasses.replace(
            self.profile,
            quality_points=tuple(points),
            layer_alone=alone.layers,
            layer_alone_error=alone.layer_errors,
            expert_alone=alone.experts,
            alone_tokens=alone.tokens,
        )
        return QualityModel.fit(valid)

    @cached_property
    def models(self) -> tuple[Any, Any]:
        """(LatencyModel, QualityModel) fitted to the profile."""
        from moeqos.planner.latency_model import LatencyModel
        from moeqos.planner.quality_model import QualityModel

        return LatencyModel.fit(self.profile), QualityModel.fit(self.profile)

    @cached_property
    def experts_only(self) -> tuple[Any, Any, Any]:
        """(profile, LatencyModel, QualityModel) with the dense part held in the dense precision: for
        sections about where experts go, whose budgets a smaller dense part would otherwise loosen."""
        from moeqos.planner.latency_model import LatencyModel
        from moeqos.planner.quality_model import QualityModel

        profile = dataclasses.replace(self.profile, dense_costs=())
        return profile, LatencyModel.fit(profile), QualityModel.fit(profile)

    @cached_property
    def budgets(self) -> tuple[Any, ...]:
        """The device tier sized for every expert in bf16 (the quality reference), no disk."""
        from moeqos.core.tier import TierBudget

        layers, experts = self.shape
        return (TierBudget(DEVICE, layers * experts * self.profile.expert_bytes()[Precision.BF16]),)

    def frontier_under(
        self, budgets: tuple[Any, ...], precisions: Any, experts_only: bool = False
    ) -> list[Any]:
        """The planner's frontier within `budgets` over `precisions` (PlanResults, slowest first);
        `experts_only`: with the dense part held in the dense precision (see `experts_only`)."""
        from moeqos.planner.frontier import frontier

        profile, (latency, quality) = self.profile, self.models
        if experts_only:
            profile, latency, quality = self.experts_only
        points = frontier(
            profile,
            budgets,
            self.settings.frontier_points,
            latency=latency,
            quality=quality,
            allowed_precisions=frozenset(precisions),
        )
        return sorted(points, key=lambda r: r.predicted_tokens_per_s)

    @cached_property
    def frontier(self) -> list[Any]:
        """The frontier with every expert in RAM over FITTING_PRECISIONS; `frontier_seconds` says how
        long the solve took (the profile and the fitted models, measured on first use, before the clock)."""
        budgets, _ = self.budgets, self.models
        start = time.perf_counter()
        points = self.frontier_under(budgets, FITTING_PRECISIONS)
        self.frontier_seconds = time.perf_counter() - start
        return points

    @cached_property
    def dial(self) -> list[Any]:
        """The frontier restricted to bf16 and int4, the paper's two precisions (slowest first): where
        the full frontier has too few plans to measure, held-out plans are taken from here too."""
        return self.frontier_under(self.budgets, (Precision.BF16, Precision.INT4))

    @cached_property
    def knee(self) -> Any:
        """The frontier point past which more speed costs much more perplexity (see metrics.knee_index)."""
        from moeqos.bench.metrics import knee_index

        points = self.frontier
        index = knee_index(
            [p.predicted_tokens_per_s for p in points], [p.predicted_perplexity for p in points]
        )
        return points[index]

    # ----- measurements ---------------------------------------------------------------------------
    def apply(self, plan: Plan) -> Any:
        """Switch the executor to `plan` (a no-op switch when it already serves it)."""
        return self.runtime.apply_plan(plan)

    def decode_speed(self, plan: Plan) -> Speed:
        """Median decode tokens/s of `plan` over `repeats` greedy runs of exactly `decode_tokens` tokens
        after one warm-up run (cached per plan).

        Times the executor's own decode loop with end-of-sequence ignored, through the one mechanism
        `moeqos eval` and the Evaluate RPC use too (moeqos.executor.generation.time_decode), so every
        plan and the baseline generate the same number of tokens whatever they predict.
        """
        from moeqos.executor.generation import time_decode

        key = plan.to_spec()
        if key not in self.speeds:
            self.log(f"decode speed of {plan.describe()}")
            self.apply(plan)
            timing = time_decode(
                self.runtime.decode_step, self.prompt_ids, self.settings.decode_tokens, self.settings.repeats
            )
            self.speeds[key] = Speed(timing.tokens_per_s, timing.rates, timing.tokens)
        return self.speeds[key]

    def perplexity(self, plan: Plan) -> Any:
        """ptb:test perplexity of `plan` over `eval_tokens` tokens (cached per plan; a fitting plan's
        is the profile's measurement, on the same tokens): anything with a `.perplexity`."""
        key = plan.to_spec()
        if key not in self.perplexities:
            self.perplexities.update((q.plan_spec, q) for q in self.profile.quality_points)
        if key not in self.perplexities:
            self.log(f"perplexity of {plan.describe()}")
            self.apply(plan)
            self.perplexities[key] = self.runtime.evaluate(
                self.test_ids, plan, context_length=self.settings.context_length, decode_tokens=0
            )
        return self.perplexities[key]

    @cached_property
    def test_ids(self) -> list[int]:
        return self.tokens("ptb:test", self.settings.eval_tokens)


def _quiet(stage: str, fraction: float) -> None:
    """A progress callback that reports nothing: its caller logs the stage."""
