"""What an executor measured about itself: the input the planner fits its cost models to.

A `Profile` is plain data (JSON round-trip through `to_dict`/`from_dict`) and says which model and
hardware it was measured on, so a cost model fitted to it can say the same. Shapes use the legend
L = layers, E = experts per layer.

Units: seconds, bytes, and "calls per token" for frequencies. `frequency[l][e]` is the fraction of
tokens that route to expert e of layer l, so each layer's row sums to top_k.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from moeqos.core.batch import BatchCall, BatchStep
from moeqos.core.dense import DenseCost
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision, expert_bytes
from moeqos.core.tier import TierBudget

PROFILE_VERSION = 14
"""14: `layer_alone_error`, the standard error of each layer's increase alone, by which the quality
signal weighs that increase against the layer's KL (moeqos.core.sensitivity); a version-13 profile has
none, and is measured again.
13: `layer_alone`, each layer whole measured alone on the quality corpus, and `expert_alone` measured
there too (it was on the calibration text; `alone_tokens` replaces `expert_alone_tokens`): the costly
experts and layers are not the same on every text, and the planner's predictions are on the quality
corpus (moeqos.core.sensitivity).
12: `expert_alone`, the loud layers' experts each measured alone (moeqos.core.sensitivity), without
which the quality model shared the last layer's and the attention-sink layer's KL by frequency and
error, and priced held-out random picks holding their costly experts at about half their damage.
11: bf16 weights stay in the plain layout where the native kernels are built (the C decode step reads
only that one): on a CPU with native oneDNN bf16 a version-10 profile timed bf16 on the PyTorch step,
which decoded the default model at about half the C step's rate (Xeon with AMX: all-bf16 28.5 against
52.8 tok/s), so it is measured again.
10: a lone stream of a bf16 model on a CPU with the native kernels decodes all its layers in one C call
(moeqos.executor.native_decode; 2.0-2.3x the PyTorch step), so a version-9 profile's fixed and call
costs priced plans at about half the rate they run (a demo executor's live recalibration read x0.51);
it is measured again.
9: each precision's factor from pairs of single steps, a trial plan with every layer in it turned in
and out beside the served plan, the median of the pairs (moeqos.executor.step_timing.paired_steps): the
fastest rounds of every third layer priced int4 calls at 35-551 us across runs on one machine; a
lossy dense element's seconds add what it adds to whole steps the same way (cold single passes priced
int8 attention and head 6 ms a token cheaper than bf16's prepacked kernels; steps ran no faster).
8: bf16 weights on a CPU with native oneDNN bf16 compute from a prepacked layout (bf16 expert calls
1.3-2.3x cheaper, the dense part's fixed cost lower), so a version-7 profile's bf16 call costs and fixed
cost price plans slower than they run; it is measured again.
7: `error_overlap`, the share of each layer's routed expert-error energy in pairs of experts on one
token, without which the quality model priced a layer's experts additively and a random quarter of the
default model's experts at 1.5x its measured damage; a version-6 profile is measured again.
6: each precision's call costs calibrated to decode steps on their own (a step with a third of the
layers in that precision), not all by the served plan's one factor: a version-5 profile priced int8
25-30% cheaper than bf16 on the default model, where served steps take the same time.
5: int3 and int2 keep an integer zero point per group (their bytes, call costs and quality changed),
batch timings (decode steps on several streams), quality points of the designed plans chosen after the
uniform plans' increases; a version-4 profile is measured again.
4: int3 and int2 are bit-packed (their call costs and bytes changed: a version-3 profile priced them as
fast as int4, so a planner reading one chose int3 for speed and measured a quarter of its prediction),
group-size precisions, the dense elements' costs; a version-3 profile is measured again.
3: `layer_kl` (the output-KL sensitivity of each layer per precision) and designed mixed quality
plans, without which the quality model could not tell which experts matter; a version-2 profile is
measured again.
2: load costs are what a miss adds to a decode step (moeqos.executor.disk_calibration), not a load timed
alone, which priced disk-heavy plans 20-37% fast; a version-1 profile is measured again."""

Grid = tuple[tuple[float, ...], ...]
"""A [L, E] table of floats."""


def uniform_precision(spec: str) -> Precision | None:
    """The precision of a uniform plan in text form (`bf16@cpu`), None for anything else."""
    if "," in spec or "=" in spec or spec.lstrip().startswith("{"):
        return None
    try:
        return Precision.parse(spec.split("@")[0])
    except ValueError:
        return None


def _grid(rows: Any) -> Grid:
    return tuple(tuple(float(x) for x in row) for row in rows)


@dataclass(frozen=True)
class ModelIdentity:
    """The model a profile, plan or cost model belongs to. Its layers are the MoE layers; `num_experts`
    and `top_k` count a shared expert's slices too (plan elements every token runs)."""

    name: str
    """Human name, e.g. `smollm2-135m-moe8` or the checkpoint directory's name."""
    fingerprint: str
    """Hex digest of the checkpoint's config and tensor index; equal fingerprints mean the same weights."""
    num_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    dense_bytes: int = 0
    """Bytes of the non-expert weights (attention, norms, router, embeddings, head) as served."""

    def expert_bytes(self, precision: Precision, group_size: int = DEFAULT_GROUP_SIZE) -> int:
        """Bytes of one expert of this model in `precision`."""
        return expert_bytes(self.hidden_size, self.intermediate_size, precision, group_size)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(**data)


@dataclass(frozen=True)
class HardwareIdentity:
    """The machine a profile was measured on."""

    device: str
    """The executor's execution device string (`cpu`, `cuda:0`)."""
    device_name: str
    """Processor or accelerator model, as the OS or driver names it."""
    host: str
    threads: int
    """Compute threads torch used."""
    torch_version: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareIdentity:
        return cls(**data)


@dataclass(frozen=True)
class CallCost:
    """Median time of one expert call for one decode token with the expert in (precision, tier)."""

    precision: Precision
    tier: str
    bytes: int
    """Bytes of the expert in this precision (what the call streams from memory)."""
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallCost:
        return cls(Precision(data["precision"]), data["tier"], int(data["bytes"]), float(data["seconds"]))


@dataclass(frozen=True)
class LoadCost:
    """Median time to bring one expert in `precision` from the `disk` tier into a pool slot."""

    precision: Precision
    bytes: int
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadCost:
        return cls(Precision(data["precision"]), int(data["bytes"]), float(data["seconds"]))


@dataclass(frozen=True)
class QualityPoint:
    """A plan whose perplexity the executor measured (what the quality model is fitted to)."""

    plan_spec: str
    """The plan in text form (moeqos.core.plan.parse_plan reads it)."""
    perplexity: float
    corpus: str
    """Corpus name with split, e.g. `ptb:valid` (see moeqos.core.corpora)."""
    tokens: int
    """Tokens scored."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityPoint:
        return cls(
            str(data["plan_spec"]), float(data["perplexity"]), str(data["corpus"]), int(data["tokens"])
        )


@dataclass(frozen=True)
class Profile:
    """Measurements of one executor running one model on one machine."""

    model: ModelIdentity
    hardware: HardwareIdentity
    calibration_corpus: str
    """Corpus the frequencies and quantization errors were measured on, e.g. `ptb:train`."""
    calibration_tokens: int
    frequency: Grid
    """[L, E] expected calls of each expert per token (each row sums to top_k)."""
    fixed_seconds: float
    """Decode time per token spent outside the experts (attention, embeddings, head, router, overhead)."""
    call_costs: tuple[CallCost, ...]
    """Measured per-call expert costs for each (precision, tier) the executor can serve."""
    load_costs: tuple[LoadCost, ...] = ()
    """Measured disk-to-slot load costs per precision (empty when there is no disk tier)."""
    quant_error: dict[Precision, Grid] = field(default_factory=dict)
    """Per precision, [L, E] relative output error ||y_q - y|| / ||y|| of each expert on calibration
    activations (0 for the reference precision)."""
    quality_points: tuple[QualityPoint, ...] = ()
    """Plans with measured perplexity, including the full-precision reference when measured."""
    tiers: tuple[TierBudget, ...] = ()
    """The executor's tiers and budgets when measured."""
    disk_pool_slots: int = 0
    """Slots in the disk tier's pool (experts that can be resident at once after a load)."""
    disk_reads: str = ""
    """How the disk tier read its files when `load_costs` were measured (`cached` or `uncached`; see
    moeqos.executor.config.ExecutorConfig.disk_reads); empty without a disk tier."""
    group_size: int = DEFAULT_GROUP_SIZE
    measured_at: str = ""
    """ISO-8601 UTC time of measurement."""
    version: int = PROFILE_VERSION
    layer_kl: dict[Precision, tuple[float, ...]] = field(default_factory=dict)
    """Per precision, [L] mean per-token KL divergence (nats) of the next-token distribution from the
    reference's when every expert of layer l is in that precision, on the first `sensitivity_tokens`
    calibration tokens (moeqos.executor.sensitivity; moeqos.core.sensitivity turns it into a per-expert
    signal). Empty when not measured."""
    sensitivity_tokens: int = 0
    """Calibration tokens `layer_kl` was measured on (0 when not measured)."""
    expert_alone: dict[int, tuple[float, ...]] = field(default_factory=dict)
    """Per loud layer l (moeqos.core.sensitivity.loud_layers of the first `layer_kl` precision), [E] the
    quality corpus's log-perplexity increase (nats per token) with only expert e of l in that precision
    (moeqos.executor.sensitivity.alone_increases). Empty when not measured."""
    layer_alone: tuple[float, ...] = ()
    """[L] the quality corpus's log-perplexity increase (nats per token) with every expert of layer l,
    and only those, in the first `layer_kl` precision. Empty when not measured."""
    layer_alone_error: tuple[float, ...] = ()
    """[L] the standard error of `layer_alone[l]`: the standard deviation of its per-token increases over
    the square root of their count (one value per `layer_alone` value)."""
    alone_tokens: int = 0
    """Quality-corpus tokens `layer_alone` and `expert_alone` were measured on (0 when not measured)."""
    error_overlap: tuple[float, ...] = ()
    """[L] the share of layer l's routed, router-weighted expert output-error energy that lies in the
    cross terms of a token's experts, measured with the experts in the first `layer_kl` precision
    (moeqos.executor.error_overlap): 0 when each expert's error is independent of the others' (the
    experts' damage adds up), 0.5 on the default model (identical experts, top-2, even weights: a
    layer's damage grows with the square of the share of its routing that is quantized). Empty when
    not measured (the quality model then adds the experts' damage)."""
    dense_costs: tuple[DenseCost, ...] = ()
    """Per dense element and precision, its bytes, decode seconds and quality effect
    (moeqos.core.dense); empty when not measured: the planner then keeps the dense part as it is."""
    dense_precision: Precision = Precision.BF16
    """The model's dense precision when measured (what a dense element no plan names is in)."""
    batch_calls: tuple[BatchCall, ...] = ()
    """Per (precision, tier), an expert call on several tokens against one (moeqos.core.batch); empty
    when batched steps were not measured: the planner then predicts one stream alone only."""
    batch_steps: tuple[BatchStep, ...] = ()
    """Decode steps on several streams at once, by rows (moeqos.core.batch); empty when not measured."""

    def __post_init__(self) -> None:
        rows = len(self.frequency)
        if rows != self.model.num_layers or any(len(r) != self.model.num_experts for r in self.frequency):
            raise ValueError(
                f"frequency must be [{self.model.num_layers}, {self.model.num_experts}], got {rows} rows"
            )
        for precision, grid in self.quant_error.items():
            if len(grid) != rows or any(len(r) != self.model.num_experts for r in grid):
                raise ValueError(f"quant_error[{precision}] must be [layers, experts]")
        for precision, row in self.layer_kl.items():
            if len(row) != rows:
                raise ValueError(f"layer_kl[{precision}] must have one value per layer ({rows})")
        if self.error_overlap and len(self.error_overlap) != rows:
            raise ValueError(f"error_overlap must have one value per layer ({rows})")
        if self.layer_alone and len(self.layer_alone) != rows:
            raise ValueError(f"layer_alone must have one value per layer ({rows})")
        if len(self.layer_alone_error) != len(self.layer_alone):
            raise ValueError("layer_alone_error must have one standard error per layer_alone value")
        if any(not se >= 0 for se in self.layer_alone_error):
            raise ValueError("layer_alone_error must be non-negative")
        for layer, row in self.expert_alone.items():
            if not 0 <= layer < rows or len(row) != self.model.num_experts:
                raise ValueError(
                    f"expert_alone[{layer}] must be a layer below {rows} with one value per expert"
                )

    @property
    def precisions(self) -> list[Precision]:
        """Precisions with at least one measured call cost, in enum order."""
        measured = {c.precision for c in self.call_costs}
        return [p for p in Precision if p in measured]

    def expert_bytes(self) -> dict[Precision, int]:
        """Bytes of one expert in each precision of this profile."""
        return {p: self.model.expert_bytes(p, self.group_size) for p in Precision}

    def reference_point(self) -> tuple[QualityPoint, Precision] | None:
        """The full-precision reference: the measured uniform plan in the most precise float precision
        (a uniform int8 plan is an ordinary quality point, not a reference), or None."""
        uniform = [
            (q, p) for q in self.quality_points if (p := uniform_precision(q.plan_spec)) and p.is_float
        ]
        return max(uniform, key=lambda item: item[1].bits) if uniform else None

    def reference_perplexity(self) -> float | None:
        """The perplexity of `reference_point`, if one was measured."""
        point = self.reference_point()
        return point[0].perplexity if point else None

    # ----- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["quant_error"] = {p.value: [list(r) for r in g] for p, g in self.quant_error.items()}
        data["frequency"] = [list(r) for r in self.frequency]
        data["layer_kl"] = {p.value: list(r) for p, r in self.layer_kl.items()}
        data["expert_alone"] = {str(layer): list(r) for layer, r in self.expert_alone.items()}
        return json.loads(json.dumps(data, default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        version = int(data.get("version", PROFILE_VERSION))
        if version != PROFILE_VERSION:
            raise ValueError(
                f"profile version {version} is not supported (this build reads {PROFILE_VERSION})"
            )
        return cls(
            model=ModelIdentity.from_dict(data["model"]),
            hardware=HardwareIdentity.from_dict(data["hardware"]),
            calibration_corpus=str(data["calibration_corpus"]),
            calibration_tokens=int(data["calibration_tokens"]),
            frequency=_grid(data["frequency"]),
            fixed_seconds=float(data["fixed_seconds"]),
            call_costs=tuple(CallCost.from_dict(c) for c in data["call_costs"]),
            load_costs=tuple(LoadCost.from_dict(c) for c in data.get("load_costs", [])),
            quant_error={Precision(p): _grid(g) for p, g in data.get("quant_error", {}).items()},
            quality_points=tuple(QualityPoint.from_dict(q) for q in data.get("quality_points", [])),
            layer_kl={Precision(p): tuple(float(x) for x in r) for p, r in data.get("layer_kl", {}).items()},
            sensitivity_tokens=int(data.get("sensitivity_tokens", 0)),
            expert_alone={
                int(layer): tuple(float(x) for x in r) for layer, r in data.get("expert_alone", {}).items()
            },
            layer_alone=tuple(float(x) for x in data.get("layer_alone", ())),
            layer_alone_error=tuple(float(x) for x in data.get("layer_alone_error", ())),
            alone_tokens=int(data.get("alone_tokens", 0)),
            error_overlap=tuple(float(x) for x in data.get("error_overlap", ())),
            dense_costs=tuple(DenseCost.from_dict(c) for c in data.get("dense_costs", [])),
            dense_precision=Precision(data.get("dense_precision", Precision.BF16.value)),
            batch_calls=tuple(BatchCall.from_dict(c) for c in data.get("batch_calls", [])),
            batch_steps=tuple(BatchStep.from_dict(c) for c in data.get("batch_steps", [])),
            tiers=tuple(TierBudget.from_dict(t) for t in data.get("tiers", [])),
            disk_pool_slots=int(data.get("disk_pool_slots", 0)),
            disk_reads=str(data.get("disk_reads", "")),
            group_size=int(data.get("group_size", DEFAULT_GROUP_SIZE)),
            measured_at=str(data.get("measured_at", "")),
            version=version,
        )

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.from_dict(json.loads(text))
