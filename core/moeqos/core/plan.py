"""The plan: for every expert `(layer, expert)` a precision and a memory tier.

`Plan` is the contract between the planner (which chooses one), the executor (which carries it out)
and the client (which shows it). It is frozen and validated on construction; the wire codec
(moeqos.api.codec.common) converts it to and from its message, which may also carry it by its text form.

Text form (what people type, see `parse_plan`):  `DEFAULT[,RULE...]`
    DEFAULT = precision[@tier]          e.g. `int4@cpu`
    RULE    = pattern=precision[@tier]  e.g. `L0-3.E*=bf16`, first match wins (see moeqos.core.rules)
            | element=precision         e.g. `head=int4`: the dense part (moeqos.core.dense; `attn`, `head`)
A plan can also be a JSON document (`to_dict`/`from_dict`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moeqos.core.dense import DenseElement, DensePrecisions, dense_precisions
from moeqos.core.errors import InvalidArgument
from moeqos.core.precision import DEFAULT_GROUP_SIZE, Precision
from moeqos.core.rules import PlacementRule, first_match, parse_target
from moeqos.core.tier import validate_tier


@dataclass(frozen=True, order=True)
class Assignment:
    """Where and how one expert lives."""

    precision: Precision
    tier: str

    def __post_init__(self) -> None:
        if not isinstance(self.precision, Precision):
            object.__setattr__(self, "precision", Precision.parse(str(self.precision)))
        validate_tier(self.tier)

    def __str__(self) -> str:
        return f"{self.precision.value}@{self.tier}"


@dataclass(frozen=True)
class Plan:
    """Per-expert assignments, `assignments[layer][expert]`, for a model of `num_layers x num_experts`.

    `group_size` applies to the grouped precisions (int4/int3/int2) of every expert in the plan (and of
    its dense part). `dense`: the precision of each dense element the plan names (moeqos.core.dense);
    the others are in the model's dense precision, so `()` is the plan as it was before dense elements.
    """

    assignments: tuple[tuple[Assignment, ...], ...]
    group_size: int = DEFAULT_GROUP_SIZE
    dense: DensePrecisions = ()
    _counts: Counter[Assignment] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.assignments or not self.assignments[0]:
            raise ValueError("a plan needs at least one layer and one expert")
        width = len(self.assignments[0])
        for layer, row in enumerate(self.assignments):
            if len(row) != width:
                raise ValueError(f"layer {layer} has {len(row)} experts, layer 0 has {width}")
        if self.group_size <= 0 or self.group_size % 16:
            raise ValueError(f"group_size must be a positive multiple of 16, got {self.group_size}")
        object.__setattr__(self, "_counts", Counter(a for row in self.assignments for a in row))
        object.__setattr__(self, "dense", dense_precisions(self.dense))

    # ----- shape and access -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.assignments)

    @property
    def num_experts(self) -> int:
        return len(self.assignments[0])

    def __getitem__(self, key: tuple[int, int]) -> Assignment:
        layer, expert = key
        return self.assignments[layer][expert]

    def items(self) -> Iterator[tuple[tuple[int, int], Assignment]]:
        """((layer, expert), assignment) for every expert, layer-major."""
        for layer, row in enumerate(self.assignments):
            for expert, assignment in enumerate(row):
                yield (layer, expert), assignment

    def with_dense(self, dense: DensePrecisions) -> Plan:
        """This plan's experts with the dense part `dense`."""
        return Plan(self.assignments, self.group_size, dense)

    def with_layers(self, layers: Iterable[int], precision: Precision) -> Plan:
        """This plan with every expert of `layers` in `precision`, each keeping its tier."""
        chosen = set(layers)
        rows = tuple(
            tuple(Assignment(precision, a.tier) for a in row) if layer in chosen else row
            for layer, row in enumerate(self.assignments)
        )
        return Plan(rows, self.group_size, self.dense)

    def with_expert(self, layer: int, expert: int, precision: Precision) -> Plan:
        """This plan with expert `expert` of `layer` in `precision`, keeping its tier."""
        rows = [list(row) for row in self.assignments]
        rows[layer][expert] = Assignment(precision, rows[layer][expert].tier)
        return Plan(tuple(tuple(row) for row in rows), self.group_size, self.dense)

    def tiers(self) -> set[str]:
        return {a.tier for a in self._counts}

    def counts(self) -> dict[Assignment, int]:
        """How many experts have each assignment."""
        return dict(self._counts)

    # ----- comparisons and costs --------------------------------------------------------------
    def changed_experts(self, other: Plan) -> list[tuple[int, int]]:
        """The (layer, expert) keys whose assignment differs from `other` (same shape required)."""
        self.check_shape(other.num_layers, other.num_experts)
        if other.group_size != self.group_size:
            return [
                key
                for key, a in self.items()
                if a.precision.is_grouped or other[key].precision.is_grouped or a != other[key]
            ]
        return [key for key, a in self.items() if a != other[key]]

    def bytes_per_tier(self, expert_bytes: Mapping[Precision, int]) -> dict[str, int]:
        """Bytes of experts the plan puts in each tier, given bytes per expert per precision."""
        totals: dict[str, int] = {}
        for assignment, count in self._counts.items():
            totals[assignment.tier] = (
                totals.get(assignment.tier, 0) + count * expert_bytes[assignment.precision]
            )
        return totals

    def check_shape(self, num_layers: int, num_experts: int) -> None:
        """Raise ValueError unless the plan covers exactly `num_layers x num_experts` experts."""
        if (self.num_layers, self.num_experts) != (num_layers, num_experts):
            raise ValueError(
                f"plan is {self.num_layers} layers x {self.num_experts} experts, "
                f"model is {num_layers} x {num_experts}"
            )

    # ----- construction -----------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        num_layers: int,
        num_experts: int,
        precision: Precision | str,
        tier: str,
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> Plan:
        """Every expert in the same precision and tier."""
        assignment = Assignment(Precision.parse(str(precision)), tier)
        return cls(tuple((assignment,) * num_experts for _ in range(num_layers)), group_size)

    @classmethod
    def from_rules(
        cls,
        num_layers: int,
        num_experts: int,
        default: Assignment,
        rules: list[PlacementRule],
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> Plan:
        """Resolve ordered rules (first match wins) over a default into a flat plan."""

        def resolve(layer: int, expert: int) -> Assignment:
            rule = first_match(rules, layer, expert)
            if rule is None:
                return default
            return Assignment(rule.precision, rule.tier or default.tier)

        rows = tuple(tuple(resolve(layer, e) for e in range(num_experts)) for layer in range(num_layers))
        return cls(rows, group_size)

    # ----- text and JSON forms ----------------------------------------------------------------
    def to_spec(self) -> str:
        """A compact text form that `parse_plan` reads back into an equal plan.

        The most common assignment is the default; every other expert gets a rule (runs of
        consecutive experts in one layer are merged).
        """
        default = self._counts.most_common(1)[0][0]
        rules: list[str] = [str(default)]
        for layer, row in enumerate(self.assignments):
            expert = 0
            while expert < len(row):
                if row[expert] == default:
                    expert += 1
                    continue
                end = expert
                while end + 1 < len(row) and row[end + 1] == row[expert]:
                    end += 1
                experts = str(expert) if end == expert else f"{expert}-{end}"
                rules.append(f"L{layer}.E{experts}={row[expert]}")
                expert = end + 1
        rules += [f"{element.value}={precision.value}" for element, precision in self.dense]
        return ",".join(rules)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "group_size": self.group_size,
            "assignments": [[str(a) for a in row] for row in self.assignments],
        }
        if self.dense:
            data["dense"] = {e.value: p.value for e, p in self.dense}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        try:
            rows = tuple(
                tuple(Assignment(*_split_assignment(text)) for text in row) for row in data["assignments"]
            )
            dense = dense_precisions(dict(data.get("dense", {})).items())
            plan = cls(rows, int(data.get("group_size", DEFAULT_GROUP_SIZE)), dense)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed plan document: {exc}") from exc
        if "num_layers" in data and "num_experts" in data:
            plan.check_shape(int(data["num_layers"]), int(data["num_experts"]))
        return plan

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """One line for people: counts per assignment, most common first."""
        parts = [f"{count}x{a}" for a, count in self._counts.most_common()]
        dense = "".join(f" {e.value}={p.value}" for e, p in self.dense)
        return f"{self.num_layers}x{self.num_experts} experts: " + " ".join(parts) + dense


def plan_text(argument: str) -> str:
    """The plan text a command-line argument names: the argument itself, or with `@PATH` the file's
    contents (text form or JSON); InvalidArgument if the file cannot be read."""
    if not argument.startswith("@"):
        return argument
    try:
        return Path(argument[1:]).expanduser().read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the plan file {argument[1:]!r}: {exc.strerror}") from None


def _split_assignment(text: str) -> tuple[Precision, str]:
    precision, tier = parse_target(text)
    if tier is None:
        raise ValueError(f"assignment {text!r} needs a tier (precision@tier)")
    return precision, tier


def parse_plan(
    text: str,
    num_layers: int,
    num_experts: int,
    default_tier: str,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Plan:
    """Parse the text form (`int4@cpu,L0-3.E*=bf16`) or a JSON document into a plan for the model shape.

    `default_tier` fills in any `precision` given without `@tier`. Rules naming a dense element
    (`attn=int8`, `head=int4`) set the plan's dense part; they take no tier (dense weights stay on the
    device).
    """
    text = text.strip()
    if text.startswith("{"):
        plan = Plan.from_dict(json.loads(text))
        plan.check_shape(num_layers, num_experts)
        return plan
    head, *rule_texts = [part for part in text.split(",") if part.strip()] or [""]
    if "=" in head:
        raise ValueError(f"plan {text!r} must start with a default precision[@tier], e.g. int4@cpu")
    precision, tier = parse_target(head)
    default = Assignment(precision, tier or validate_tier(default_tier))
    dense_texts = [r for r in rule_texts if _names_dense(r)]
    rules = [PlacementRule.parse(rule) for rule in rule_texts if not _names_dense(rule)]
    plan = Plan.from_rules(num_layers, num_experts, default, rules, group_size)
    return plan.with_dense(_parse_dense(dense_texts)) if dense_texts else plan


def _names_dense(rule: str) -> bool:
    return rule.partition("=")[0].strip().lower() in {e.value for e in DenseElement}


def _parse_dense(texts: list[str]) -> DensePrecisions:
    """The dense part from `element=precision` rules; ValueError on a tier or an element given twice."""
    pairs = []
    for text in texts:
        element, _, target = text.partition("=")
        precision, tier = parse_target(target)
        if tier is not None:
            raise ValueError(f"dense rule {text.strip()!r} takes no tier: dense weights stay on the device")
        pairs.append((element, precision.value))
    return dense_precisions(pairs)
