"""The executor's model runtime: load a checkpoint, carry out plans, generate, profile, evaluate.

No gRPC here (the servicer wraps this class). Two locks, private to this class:
- the model lock: every forward step holds it; a plan switch takes it only to swap the store's
  modules, after building the changed experts outside it, so requests keep flowing while a plan builds;
- the apply lock: one plan switch at a time.
Generations are decoded together, one step for all of them, by the batch scheduler
(moeqos.executor.batch_scheduler), each step under the model lock.
Measurement (profiling, evaluation) sees the runtime through moeqos.executor.measurement.Measurable:
`exclusive()` and `serving(plan)` give it what the locks guarantee without handing it the locks.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from moeqos.core.dense import DenseCharge, DenseElement, DenseStatus
from moeqos.core.errors import InvalidArgument, OutOfRange
from moeqos.core.plan import Plan
from moeqos.core.precision import Precision
from moeqos.core.profile import Profile
from moeqos.core.service_types import Evaluation, GenerationEvent, SwitchReport
from moeqos.core.tier import DISK, TierStatus
from moeqos.executor.adapters import adapter_for
from moeqos.executor.batch_scheduler import BatchScheduler
from moeqos.executor.budgets import check_budget, default_plan, physical_budget, plan_bytes, validate_plan
from moeqos.executor.checkpoint import Checkpoint
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.dense_part import DensePart
from moeqos.executor.evaluation import evaluate
from moeqos.executor.fast_decode import FastDecoder, unsupported_reason
from moeqos.executor.generation import SamplingParams, Step
from moeqos.executor.host_memory import release_freed_memory
from moeqos.executor.identity import hardware_identity, model_identity
from moeqos.executor.kv_cache import KvCache
from moeqos.executor.layer_tail import capturing_inputs, skipping
from moeqos.executor.loader import build_model, load_config, moe_blocks
from moeqos.executor.moe import MoeBlock
from moeqos.executor.plan_view import check_room_beside, private_view
from moeqos.executor.profiling import build_profile
from moeqos.executor.prompts import PromptCodec
from moeqos.executor.store import ExpertStore, StoreStats
from moeqos.executor.thread_knob import ThreadKnob
from moeqos.executor.variants import ExpertKey, VariantFactory, build_changed, variant_key

Progress = Callable[[str, float], None]

PROMPT_CHARS_PER_TOKEN = 64
"""More characters than any served tokenizer packs into one token of real text: a prompt longer than
the context times this cannot fit, and is refused before tokenizing it (seconds and gigabytes for a
prompt of megabytes)."""


@dataclass(frozen=True)
class PlanSwitch:
    """A plan switch: what the service reports (`report`) and the runtime's own record of it."""

    report: SwitchReport
    previous: Plan | None
    """The plan served before (None for the first plan, at load)."""
    current: Plan
    changed: tuple[ExpertKey, ...] = ()
    """The (layer, expert) keys whose assignment changed."""
    dense_changed: tuple[DenseElement, ...] = ()
    """The dense elements re-quantized (moeqos.executor.dense_part)."""


class ExecutorRuntime:
    """One model on one device, serving whatever plan was applied last."""

    def __init__(
        self, config: ExecutorConfig, checkpoint: Checkpoint, hf_config: Any, variant_dir: Path
    ) -> None:
        self.config = config
        self.adapter = adapter_for(str(checkpoint.config_dict.get("model_type")))
        self.hf_config = hf_config
        self.spec = self.adapter.spec(hf_config)
        self.num_layers = self.spec.num_layers
        self.num_experts = self.spec.num_experts
        self.shape = (self.spec.hidden, self.spec.intermediate)
        source = self.adapter.expert_source(hf_config, checkpoint)
        self.factory = VariantFactory.for_config(source, self.shape, variant_dir, config)
        self.factory.check_experts()
        self.store = ExpertStore(self.factory, config.device, config.host_policy, config.disk_pool_slots)
        self.lm = build_model(
            checkpoint, self.adapter, hf_config, config.device, config.dense_precision, self.store
        )
        self.model = model_identity(checkpoint, hf_config, self.spec, self.lm, config.dense_precision)
        """The served model's identity (name, fingerprint, shape), from the parameters as loaded (before
        the dense part moves the projections into kernel layouts, which are not parameters)."""
        self.dense = DensePart(self.lm, checkpoint, config.device, config.dense_precision)
        """The attention projections and lm head in the plan's dense precisions."""
        self.fast_decode_off = unsupported_reason(self.adapter.model_type, hf_config)
        """Why decode steps run on transformers' path (None: they run on `decoder`)."""
        self.decoder = (
            None
            if self.fast_decode_off
            else FastDecoder(self.lm, hf_config, self.adapter.moe_module, self.dense)
        )
        """The own decode step for [B, 1] tokens on a KvCache (moeqos.executor.fast_decode)."""
        self.dense_charge = DenseCharge(self.dense.shapes(), config.dense_precision, config.device)
        self.hardware = hardware_identity(config.device)
        self.prompts = PromptCodec.load(checkpoint.directory, hf_config)
        self.tokenizer = self.prompts.tokenizer
        """The model's tokenizer; None when its directory has none (token-id prompts only)."""
        self.default_tier = config.device
        self.budgets = {t: config.tier_budgets.get(t, physical_budget(t, variant_dir)) for t in config.tiers}
        self.plan_applied_at = 0.0
        self._model_lock = threading.RLock()
        """Held by every forward step; a plan swap takes it briefly."""
        self.threads = ThreadKnob(torch.get_num_threads())
        """torch's thread count wanted (the QoS loop's second actuator); applied inside `exclusive`."""
        self._apply_lock = threading.RLock()
        """Held by a plan switch (and by `serving` around temporary plans)."""
        self._private_dir: tempfile.TemporaryDirectory[str] | None = None
        """The variant cache's temporary directory when no `variant_cache_dir` was configured."""
        limits = replace(config.batch, max_batch=1) if _slides(hf_config) else config.batch
        self.scheduler = BatchScheduler(self, config.device, limits, lambda: self.plan.to_spec())
        """Decodes every running generation together, one step at a time."""

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
        base, private = _variant_base(config)
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
        return default_plan((self.num_layers, self.num_experts), self.shape, self.default_tier, self.budgets)

    # ----- tiers and plans ----------------------------------------------------------------------
    def tier_status(self) -> list[TierStatus]:
        """Every tier with its budget and the bytes the current plan puts there (the device tier's
        include its dense part's bytes beyond the dense precision's: moeqos.core.dense)."""
        used = plan_bytes(self.plan, self.shape, self.dense_charge)  # a small dense part may go below 0
        return [TierStatus(name, budget, max(0, used.get(name, 0))) for name, budget in self.budgets.items()]

    def validate_plan(self, plan: Plan) -> None:
        """InvalidArgument (shape, tiers, group size) or OverBudget unless `plan` can run here."""
        validate_plan(plan, (self.num_layers, self.num_experts), self.shape, self.budgets, self.dense_charge)

    def set_budget(self, tier: str, budget_bytes: int) -> bool:
        """Record a tier's budget; returns whether the current plan still fits."""
        check_budget(tier, budget_bytes, self.budgets)
        self.budgets[tier] = budget_bytes
        return plan_bytes(self.plan, self.shape, self.dense_charge).get(tier, 0) <= budget_bytes

    def dense_status(self) -> tuple[DenseStatus, ...]:
        """Every dense element with the precision it is served in and its bytes."""
        with self._model_lock:
            return self.dense.status()

    def apply_plan(
        self, plan: Plan, progress: Progress | None = None, check: Callable[[], None] | None = None
    ) -> PlanSwitch:
        """Validate, build the experts whose assignment differs and the dense elements whose precision
        differs (outside the model lock), swap atomically.

        `check` runs first, under the apply lock: whatever it raises refuses the switch with nothing
        changed (a re-plan checks it is still wanted, with no other switch in between). On a build
        failure the partial work is dropped and PlanApplyFailed raised; the previous plan keeps serving.
        """
        with self._apply_lock:
            if check is not None:
                check()
            self.validate_plan(plan)
            start = time.perf_counter()
            previous = self.store.plan
            changed = [k for k, _ in plan.items()] if previous is None else plan.changed_experts(previous)
            on_disk = [variant_key(plan, key) for key in changed if plan[key].tier == DISK]
            self.factory.check_room(on_disk, self.config.device)  # before anything is written or swapped
            dense_changed = self.dense.changed(plan)
            dense_built = self.dense.build(plan, dense_changed)  # first: it fails before experts are built
            built = build_changed(self.factory, plan, changed, self.config.device, progress)
            with self._model_lock:
                retired = self.store.install(plan, built)
                self.dense.install(plan, dense_built)
                self.plan_applied_at = time.time()
            dense_built.clear()
            while retired:  # popped, so no reference outlives the loop
                self.factory.retire(*retired.pop())
            release_freed_memory()  # the replaced experts not kept in the variant cache are free now
            report = SwitchReport(experts_changed=len(changed), seconds=time.perf_counter() - start)
            return PlanSwitch(report, previous, plan, tuple(changed), tuple(dense_changed))

    @contextmanager
    def serving(self, plan: Plan | None) -> Iterator[None]:
        """Serve `plan` inside the block, then restore the previous plan (no switch when `plan` is None
        or already served). No other switch interleaves; requests running meanwhile get `plan`."""
        with self._apply_lock:
            previous = self.plan
            if plan is None or plan == previous:
                yield
                return
            self.apply_plan(plan)
            try:
                yield
            finally:
                self.apply_plan(previous)

    @contextmanager
    def alternating(self, plan: Plan) -> Iterator[Callable[[bool], None]]:
        """Serve `plan` and the plan served now by turns inside the block: the block gets `turn`, and
        `turn(True)` serves `plan`, `turn(False)` the plan before. Both plans' experts and dense
        matrices stay resident, so a turn swaps references and builds nothing (what timing two plans
        step by step against each other needs: moeqos.executor.costs, dense_profile; a plan switch
        each way rebuilt ~200 ms of experts here, and a dense element takes seconds to quantize).

        Disk-tier experts may not differ (InvalidArgument); `plan`'s own experts count against the
        budgets beside the served plan (OverBudget before anything is built). No other switch
        interleaves, and the plan before is served again afterwards.
        """
        with self._apply_lock:
            served = self.plan
            changed = plan.changed_experts(served)
            if any(DISK in (plan[key].tier, served[key].tier) for key in changed):
                raise InvalidArgument("alternating plans may not differ in their disk-tier experts")
            self.validate_plan(plan)
            check_room_beside(self, plan, served, changed)
            dense_changed = self.dense.changed(plan)
            dense_built = self.dense.build(plan, dense_changed)
            dense_kept = {slot.name: slot.module for e in dense_changed for slot in self.dense.slots[e]}
            built = build_changed(self.factory, plan, changed, self.config.device)
            kept = {key: module for key in changed if (module := self.store.module(key)) is not None}

            def turn(to_plan: bool) -> None:
                with self._model_lock:
                    self.store.install(plan if to_plan else served, built if to_plan else kept)
                    self.dense.install(plan if to_plan else served, dense_built if to_plan else dense_kept)

            try:
                yield turn
            finally:
                turn(False)
                for key, module in built.items():
                    self.factory.retire(variant_key(plan, key), module)
                built.clear()
                dense_built.clear()
                release_freed_memory()

    @contextmanager
    def viewing(self, plan: Plan | None) -> Iterator[None]:
        """Compute with `plan` inside the block on the calling thread only (moeqos.executor.plan_view):
        the plan served to everyone else never changes. None (or the plan served) holds the apply lock
        instead, so the plan measured is the one served throughout."""
        if plan is None or plan == self.plan:
            with self._apply_lock:
                yield
            return
        with private_view(self, plan):
            yield

    def store_stats(self) -> StoreStats:
        """Disk-tier pool hits/misses, bytes moved between tiers, resident slots."""
        return self.store.stats()

    # ----- forward passes -----------------------------------------------------------------------
    def forward_logits(
        self,
        token_ids: torch.Tensor,
        cache: Any = None,
        keep: int = 0,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, S', V] for token ids [B, S] (S' = keep if keep else S), one locked forward step.
        A left-padded batch passes its attention mask [B, cached + S] and position ids [B, S].

        On a filled `KvCache` one token per row is decoded by the own decode step (`decoder`, when the
        family has one); every other pass runs transformers' model, a KvCache lent to it as views."""
        token_ids = token_ids.to(self.config.device)
        with self._model_lock, torch.inference_mode():
            if not isinstance(cache, KvCache):
                return self._transformers_logits(token_ids, cache, keep, attention_mask, position_ids)
            if self.decoder is not None and token_ids.shape[1] == 1 and cache.width:
                return self.decoder(token_ids, cache, attention_mask, position_ids)  # [B, 1, V]
            dynamic = cache.as_dynamic()
            logits = self._transformers_logits(token_ids, dynamic, keep, attention_mask, position_ids)
            cache.absorb(dynamic)
            return logits

    def _transformers_logits(
        self,
        token_ids: torch.Tensor,
        cache: Any,
        keep: int,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        out = self.lm(
            input_ids=token_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=keep,
        )
        return out.logits

    def layer_inputs(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, S, V] for token ids [B, S] and the hidden states [B, S, H] entering each MoE layer
        (in MoE layer order), from one locked forward pass: the starts `logits_from` takes."""
        layers = self.adapter.layers(self.lm)
        token_ids = token_ids.to(self.config.device)
        with (
            self._model_lock,
            torch.inference_mode(),
            capturing_inputs(layers, self.spec.moe_layers) as inputs,
        ):
            logits = self._transformers_logits(token_ids, None, 0, None, None)
        return logits, [inputs[i] for i in self.spec.moe_layers]  # a layer not reached: KeyError

    def logits_from(self, layer: int, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, S, V] for token ids [B, S] of a locked forward pass that starts at MoE layer
        `layer` with `hidden` [B, S, H] (`layer_inputs`' on the same tokens: the result is then the
        whole pass's), the layers before it skipped (moeqos.executor.layer_tail)."""
        layers = self.adapter.layers(self.lm)
        token_ids = token_ids.to(self.config.device)
        with self._model_lock, torch.inference_mode(), skipping(layers, self.spec.moe_layers[layer], hidden):
            return self._transformers_logits(token_ids, None, 0, None, None)

    def new_cache(self) -> Any:
        """An empty KV cache for `forward_logits`: a KvCache where the own decode step serves the family,
        else transformers' DynamicCache (a sliding window's layers keep only the window)."""
        if self.decoder is not None:
            return KvCache()
        from transformers import DynamicCache

        return DynamicCache(config=self.hf_config)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Inside the block no other thread runs a forward step (the model lock; re-entrant)."""
        with self._model_lock:
            self.threads.apply()  # torch's count is per OS thread: set it on the one about to step
            yield

    def moe_blocks(self) -> Sequence[MoeBlock]:
        """The MoE block of every layer, in layer order (for observing routing while measuring)."""
        return moe_blocks(self.lm, self.adapter)

    def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        cancel: threading.Event | None = None,
        on_step: Callable[[int, float], None] | None = None,
    ) -> Iterator[GenerationEvent]:
        """Stream a completion, decoded in a batch with every other running generation
        (moeqos.executor.batch_scheduler); inputs are validated here, before the first token. `on_step`
        hears each token's step time (see moeqos.executor.batch_stream.Stream)."""
        ids = self.encode(prompt)
        params.validate(len(ids), self.context_length)
        if params.stop and self.tokenizer is None:
            raise InvalidArgument("stop strings need a tokenizer; this model directory has none")
        return self.scheduler.submit(
            ids, params, self.prompts.eos_ids(), self.prompts.decoder(), cancel, on_step
        )

    def decode_step(self) -> Step:
        """A decode step with its own fresh KV cache: new token ids -> logits [V] of the last position."""
        cache = self.new_cache()

        def step(new_ids: list[int]) -> torch.Tensor:
            return self.forward_logits(torch.tensor([new_ids]), cache, keep=1)[0, -1]  # [V]

        return step

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text needs the tokenizer); InvalidArgument when empty or out of vocab."""
        if isinstance(prompt, str):
            self._check_prompt_size(len(prompt))
        return self.prompts.encode(prompt)

    def encode_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of a conversation of (role, content) turns rendered with the tokenizer's chat
        template, ending with the assistant's turn to speak; InvalidArgument without a template."""
        self._check_prompt_size(sum(len(content) for _, content in messages))
        return self.prompts.encode_chat(messages)

    def _check_prompt_size(self, chars: int) -> None:
        """OutOfRange when `chars` characters cannot fit the context, before any tokenizing."""
        limit = PROMPT_CHARS_PER_TOKEN * self.context_length
        if chars > limit:
            raise OutOfRange(
                f"the prompt has {chars} characters; at most {limit} fit the "
                f"{self.context_length}-token context"
            )

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
        sensitivity_tokens: int = 256,
    ) -> Profile:
        """Measure frequencies, quantization errors, call/load/fixed costs and the quality of
        `quality_plans`, bounded by `max_tokens`, `capture_tokens`, `repeats` (the stages and options:
        moeqos.executor.profiling.build_profile). `sensitivity_tokens`: calibration tokens the layer KL
        is measured on (0: not measured, and no designed quality plans); 256 because on the default
        model the layer KL on 128 ranks the bench's held-out plans at Spearman 0.944, on 256 at 0.953."""
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
            sensitivity_tokens=sensitivity_tokens,
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
        tokens/s, under `plan` (computed on this thread only: the plan served to others never changes);
        `corpus` labels the token ids in the result."""
        return evaluate(self, token_ids, plan, context_length, stride, decode_tokens, corpus)


def _variant_base(config: ExecutorConfig) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """Where variants go: the configured cache, or else a private directory (also returned) that
    close() removes (or, as a fallback, its collection or the interpreter's exit)."""
    if config.variant_cache_dir is not None:
        return config.variant_cache_dir, None
    private = tempfile.TemporaryDirectory(prefix="moeqos-variants-")
    return Path(private.name), private


def _slides(hf_config: Any) -> bool:
    """Whether attention has a sliding window: it counts key columns, left padding included, so such a
    model decodes one stream a step (moeqos.executor.batch_cache pads rows)."""
    window = getattr(hf_config, "sliding_window", None)
    return window is not None and bool(getattr(hf_config, "use_sliding_window", True))


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)
