"""What a section hands back (tables, goals, data, plots), printed as text tables and saved as JSON.

Every table's header names the machine and the command, so a number pasted elsewhere still says
where it came from.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Machine:
    """The machine the numbers were measured on."""

    cpu: str
    cpus: int
    threads: int
    """Compute threads torch used (0 when torch was not loaded)."""
    host: str

    @classmethod
    def detect(cls, threads: int = 0) -> Machine:
        return cls(cpu_model(), os.cpu_count() or 0, threads, platform.node())

    def describe(self) -> str:
        threads = f", {self.threads} torch threads" if self.threads else ""
        return f"{self.cpu} ({self.cpus} cpus{threads})"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model as /proc/cpuinfo names it, else what `platform` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


@dataclass(frozen=True)
class Table:
    """A titled grid of already-formatted cells."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()

    def render(self, header: str = "") -> str:
        """Aligned text: title, optional machine/command header, column heads, rows, notes."""
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        line = "  ".join("-" * w for w in widths)
        lines = [f"== {self.title}", *([header] if header else []), _row(self.columns, widths), line]
        lines += [_row(r, widths) for r in self.rows]
        return "\n".join([*lines, *(f"  {n}" for n in self.notes)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
            "notes": list(self.notes),
        }


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(cells, widths, strict=True)
    ).rstrip()


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or cell[:2] in ("-0", "-1", "+0", "+1") or cell in ("nan", "-")


def table(title: str, columns: list[str], rows: list[list[Any]], notes: list[str] | None = None) -> Table:
    """A Table from raw cells (numbers formatted by `cell`)."""
    return Table(title, tuple(columns), tuple(tuple(cell(v) for v in r) for r in rows), tuple(notes or ()))


def cell(value: Any) -> str:
    """Numbers to 4 significant digits (ints in full), None as '-', everything else via str."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class Goal:
    """A target the product promises and whether this run met it."""

    name: str
    target: str
    value: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "value": _json_number(self.value),
            "passed": self.passed,
        }


@dataclass
class SectionResult:
    """One section's output: tables to print, goals, JSON-able data, plot files."""

    name: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def goal_table(self) -> Table | None:
        if not self.goals:
            return None
        rows = [[g.name, g.target, g.value, "PASS" if g.passed else "MISS"] for g in self.goals]
        return table(f"{self.name}: goals", ["goal", "target", "value", "result"], rows)

    def render(self, header: str) -> str:
        if self.error:
            return f"== {self.name}: FAILED\n{header}\n  {self.error}"
        goals = self.goal_table()
        parts = [t.render(header) for t in [*self.tables, *([goals] if goals else [])]]
        parts += [f"  plot: {p}" for p in self.plots]
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "error": self.error,
            "goals": [g.to_dict() for g in self.goals],
            "tables": [t.to_dict() for t in self.tables],
            "plots": list(self.plots),
            "data": self.data,
        }


def _json_number(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def json_ready(value: Any) -> Any:
    """`value` with NaN/inf floats replaced by None, so the JSON is valid for strict readers."""
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write `document` as indented strict JSON (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(document), indent=2, allow_nan=False) + "\n")
    return path
