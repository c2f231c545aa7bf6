"""The executor's model runtime: load a checkpoint, carry out plans, generate, profile, evaluate.

No gRPC here (the servicer wraps this class). Two locks:
- the model lock: every forward step holds it; a plan switch takes it only to swap the store's
  modules, after building the changed experts outside it, so requests keep flowing while a plan builds;
- the apply lock: one plan switch at a time.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from moeqos.core.errors import InvalidArgument, OverBudget, PlanApplyFailed
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.service_types import Evaluation, GenerationEvent, SwitchReport
from moeqos.core.tier import DISK, TierStatus
from moeqos.executor.adapters import adapter_for
from moeqos.executor.budgets import physical_budget, validate_plan
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.generation import SamplingParams, decode_loop
from moeqos.executor.identity import hardware_identity, model_identity
from moeqos.executor.loader import build_model, load_config
from moeqos.executor.quant import QuantExpert
from moeqos.executor.store import ExpertStore, StoreStats
from moeqos.executor.variants import ExpertKey, VariantFactory

if TYPE_CHECKING:
    from moeqos.core.profile import Profile

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class PlanSwitch:
    """A plan switch: what the service reports (`report`) and the runtime's own record of it."""

    report: SwitchReport
    previous: Plan | None
    """The plan served before (None for the first plan, at load)."""
    current: Plan
    changed: tuple[ExpertKey, ...] = ()
    """The (layer, expert) keys whose assignment changed."""


class ExecutorRuntime:
    """One model on one device, serving whatever plan was applied last."""

    def __init__(
        self, config: ExecutorConfig, checkpoint: Checkpoint, hf_config: Any, variant_dir: Path
    ) -> None:
        self.config = config
        self.adapter = adapter_for(str(checkpoint.config_dict.get("model_type")))
        self.hf_config = hf_config
        self.num_layers = self.adapter.num_layers(hf_config)
        self.num_experts = self.adapter.num_experts(hf_config)
        self.shape = (int(hf_config.hidden_size), int(hf_config.intermediate_size))
        self.factory = VariantFactory(
            checkpoint,
            self.adapter,
            self.shape,
            variant_dir,
            config.memory_cache_bytes,
            persist_all=config.variant_cache_dir is not None,
            quantize_device=config.device,
            keep_in_page_cache=config.disk_reads == "cached",
        )
        self.factory.check_experts(self.num_layers, self.num_experts)
        self.store = ExpertStore(self.factory, config.device, config.host_policy, config.disk_pool_slots)
        self.lm = build_model(
            checkpoint, self.adapter, hf_config, config.device, config.dense_precision, self.store
        )
        self.model = model_identity(
            checkpoint, hf_config, self.lm, self.adapter.top_k(hf_config), self.num_experts
        )
        """The served model's identity (name, fingerprint, shape)."""
        self.hardware = hardware_identity(config.device)
        self.tokenizer = _load_tokenizer(checkpoint.directory)
        self._tokenizer_lock = threading.Lock()
        """Fast tokenizers may raise "Already borrowed" when one instance is used from two threads."""
        self.default_tier = config.device
        self.budgets = {t: config.tier_budgets.get(t, physical_budget(t, variant_dir)) for t in config.tiers}
        self.plan_applied_at = 0.0
        self.model_lock = threading.RLock()
        """Held by every forward step; a plan swap takes it briefly."""
        self.apply_lock = threading.RLock()
        """Held by a plan switch (and by evaluate/profile around temporary plans)."""
        self._private_dir: tempfile.TemporaryDirectory[str] | None = None
        """The variant cache's temporary directory when no `variant_cache_dir` was configured."""

    # ----- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, config: ExecutorConfig, initial_plan: Plan | None = None, progress: Progress | None = None
    ) -> ExecutorRuntime:
        """Load the checkpoint (dense weights now, experts as the plan asks) and apply the first plan.

        Without `initial_plan`: all experts bf16 on the device if that fits its budget, else int4.
        """
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        _report(progress, "load", 0.0)
        checkpoint = Checkpoint(config.model_dir)
        hf_config = load_config(checkpoint, adapter_for(str(checkpoint.config_dict.get("model_type"))))
        # without a configured cache, variants go to a private directory removed by close() (or, as a
        # fallback, when the directory object is collected or the interpreter exits)
        private = None if config.variant_cache_dir else tempfile.TemporaryDirectory(prefix="moeqos-variants-")
        base = config.variant_cache_dir or Path(private.name)  # type: ignore[union-attr]
        try:
            runtime = cls(config, checkpoint, hf_config, base / checkpoint.fingerprint()[:16])
            runtime._private_dir = private
            _report(progress, "load", 0.2)
            runtime.apply_plan(initial_plan or runtime.default_plan(), progress)
        except BaseException:
            if private is not None:
                private.cleanup()
            raise
        _report(progress, "load", 1.0)
        return runtime

    def close(self) -> None:
        """Remove the private variant directory (if any). Idempotent; the runtime must not serve after."""
        if self._private_dir is not None:
            self._private_dir.cleanup()
            self._private_dir = None

    def __enter__(self) -> ExecutorRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def plan(self) -> Plan:
        assert self.store.plan is not None, "the runtime always has a plan after load"
        return self.store.plan

    @property
    def context_length(self) -> int:
        return int(self.hf_config.max_position_embeddings)

    def default_plan(self) -> Plan:
        """Uniform bf16 on the device tier if it fits the budget, else uniform int4."""
        for precision in (Precision.BF16, Precision.INT4):
            plan = Plan.uniform(self.num_layers, self.num_experts, precision, self.default_tier)
            try:
                self.validate_plan(plan)
            except OverBudget:
                continue
            return plan
        return plan

    # ----- tiers and plans ----------------------------------------------------------------------
    def tier_status(self) -> list[TierStatus]:
        """Every tier with its budget and the bytes the current plan puts there."""
        used = self._used_bytes(self.plan)
        return [TierStatus(name, budget, used.get(name, 0)) for name, budget in self.budgets.items()]

    def validate_plan(self, plan: Plan) -> None:
        """InvalidArgument (shape, tiers, group size) or OverBudget unless `plan` can run here."""
        validate_plan(plan, (self.num_layers, self.num_experts), self.shape, self.budgets)

    def set_budget(self, tier: str, budget_bytes: int) -> bool:
        """Record a tier's budget; returns whether the current plan still fits."""
        if tier not in self.budgets:
            raise InvalidArgument(f"unknown tier {tier!r}; this executor has {sorted(self.budgets)}")
        if not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise InvalidArgument(f"budget must be a non-negative integer, got {budget_bytes!r}")
        self.budgets[tier] = budget_bytes
        return self._used_bytes(self.plan).get(tier, 0) <= budget_bytes

    def apply_plan(self, plan: Plan, progress: Progress | None = None) -> PlanSwitch:
        """Validate, build the experts whose assignment differs (outside the model lock), swap atomically.

        On a build failure the partial work is dropped and PlanApplyFailed raised; the previous plan
        keeps serving.
        """
        with self.apply_lock:
            self.validate_plan(plan)
            start = time.perf_counter()
            previous = self.store.plan
            changed = [k for k, _ in plan.items()] if previous is None else plan.changed_experts(previous)
            built = self._build(plan, changed, progress)
            with self.model_lock:
                retired = self.store.install(plan, built)
                self.plan_applied_at = time.time()
            for variant, module in retired:
                self.factory.retire(variant, module)
            report = SwitchReport(experts_changed=len(changed), seconds=time.perf_counter() - start)
            return PlanSwitch(report, previous, plan, tuple(changed))

    def _build(
        self, plan: Plan, changed: list[ExpertKey], progress: Progress | None
    ) -> dict[ExpertKey, QuantExpert]:
        built: dict[ExpertKey, QuantExpert] = {}
        for done, key in enumerate(changed):
            assignment = plan[key]
            variant = (key[0], key[1], assignment.precision, plan.group_size)
            try:
                if assignment.tier == DISK:
                    self.factory.ensure_file(variant, self.config.device)
                else:
                    built[key] = self.factory.build(variant, assignment.tier)
            except Exception as exc:
                built.clear()
                raise PlanApplyFailed(
                    f"building expert L{key[0]}.E{key[1]} as {assignment} failed ({exc}); "
                    "the previous plan is still serving"
                ) from exc
            _report(progress, "apply_plan", (done + 1) / len(changed))
        return built

    def _used_bytes(self, plan: Plan) -> dict[str, int]:
        return validate_plan(
            plan, (self.num_layers, self.num_experts), self.shape, {t: 1 << 62 for t in self.budgets}
        )

    def store_stats(self) -> StoreStats:
        """Disk-tier pool hits/misses, bytes moved between tiers, resident slots."""
        return self.store.stats()

    # ----- forward passes -----------------------------------------------------------------------
    def forward_logits(self, token_ids: torch.Tensor, cache: Any = None, keep: int = 0) -> torch.Tensor:
        """Logits [B, S', V] for token ids [B, S] (S' = keep if keep else S), one locked forward step."""
        with self.model_lock, torch.inference_mode():
            out = self.lm(
                input_ids=token_ids.to(self.config.device),
                cache=cache,
                use_cache=cache is not None,
                logits_to_keep=keep,
            )
        return out.logits

    def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> Iterator[GenerationEvent]:
        """Stream a completion; inputs are validated here, before the first token. `on_step` hears each
        token's step time (see moeqos.executor.generation.decode_loop)."""
        from transformers import DynamicCache

        ids = self.encode(prompt)
        params.validate(len(ids), self.context_length)
        if params.stop and self.tokenizer is None:
            raise InvalidArgument("stop strings need a tokenizer; this model directory has none")
        cache = DynamicCache(config=self.hf_config)

        def step(new_ids: list[int]) -> torch.Tensor:
            return self.forward_logits(torch.tensor([new_ids]), cache, keep=1)[0, -1]  # [V]

        return decode_loop(
            step, ids, params, self.eos_ids(), self._decoder(), cancel, lambda: self.plan.to_spec(), on_step
        )

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text needs the tokenizer); InvalidArgument when empty or out of vocab."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgument("text prompts need a tokenizer; this model directory has none")
            with self._tokenizer_lock:
                ids = list(self.tokenizer.encode(prompt)) if prompt else []
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidArgument("the prompt is empty")
        vocab = int(self.hf_config.vocab_size)
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidArgument(f"prompt token ids must be in [0, {vocab})")
        return ids

    def eos_ids(self) -> set[int]:
        ids = self.hf_config.eos_token_id
        found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            found.add(int(self.tokenizer.eos_token_id))
        return found

    def _decoder(self) -> Callable[[list[int]], str] | None:
        tokenizer = self.tokenizer
        if tokenizer is None:
            return None

        def decode(ids: list[int]) -> str:
            with self._tokenizer_lock:
                return str(tokenizer.decode(ids, skip_special_tokens=True))

        return decode

    # ----- measurement --------------------------------------------------------------------------
    def profile(
        self,
        calibration_ids: list[int],
        corpus_name: str,
        *,
        max_tokens: int = 2048,
        repeats: int = 5,
        capture_tokens: int = 256,
        window: int = 512,
        quality_plans: Sequence[Plan] = (),
        quality_ids: list[int] | None = None,
        quality_corpus: str | None = None,
        precisions: Sequence[Precision] | None = None,
        progress: Progress | None = None,
    ) -> Profile:
        """Measure frequencies, quantization errors, call/load/fixed costs and the quality of
        `quality_plans` (see moeqos.executor.profiling); bounded by `max_tokens`, `capture_tokens`, `repeats`.

        Quality is measured on `quality_ids` and labelled `quality_corpus` (give both, or neither to use
        the calibration tokens). `precisions`: what to measure (default: the planning precisions of
        this device, moeqos.executor.profiling.planning_precisions)."""
        from moeqos.executor.profiling import build_profile

        with self.apply_lock:  # the plan (and its group size) must not change under the measurement
            return build_profile(
                self,
                calibration_ids,
                corpus_name,
                max_tokens=max_tokens,
                repeats=repeats,
                capture_tokens=capture_tokens,
                window=window,
                quality_plans=quality_plans,
                quality_ids=quality_ids,
                quality_corpus=quality_corpus,
                precisions=precisions,
                progress=progress or (lambda stage, fraction: None),
            )

    def evaluate(
        self,
        token_ids: list[int],
        plan: Plan | None = None,
        context_length: int = 512,
        stride: int | None = None,
        decode_tokens: int = 32,
        corpus: str = "",
    ) -> Evaluation:
        """Perplexity of `token_ids` (windows of `context_length` every `stride` tokens) and greedy decode
        tokens/s, under `plan` (applied temporarily, then the previous plan is restored); `corpus` labels
        the token ids in the result."""
        from moeqos.executor.evaluation import evaluate

        return evaluate(self, token_ids, plan, context_length, stride, decode_tokens, corpus)


def _load_tokenizer(directory: Path) -> Any:
    """The directory's tokenizer, or None when it has none (token-id prompts only)."""
    if not any(
        (directory / name).is_file()
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)
