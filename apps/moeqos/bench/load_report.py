"""What a load run measured (moeqos.bench.load): per-request records and the summary table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from moeqos.bench.load_probes import ProbeReport


@dataclass(frozen=True)
class RequestRecord:
    """One request: `completed`, `refused` (RESOURCE_EXHAUSTED, a clean answer) or `failed`."""

    outcome: str
    ttft_s: float = 0.0
    """Seconds from the call to the first token (completed requests)."""
    tokens: int = 0
    decode_tokens_per_s: float = 0.0
    """Tokens/s after the first token, as the client saw them."""
    plan: str = ""
    """Spec of the plan in force when the request finished."""
    error: str = ""


@dataclass(frozen=True)
class LoadReport:
    """The figures of one load run."""

    clients: int
    duration_s: float
    completed: int
    refused: int
    failed: int
    ttft_p50_s: float
    ttft_p99_s: float
    tokens: int
    tokens_per_s: float
    """All tokens streamed over the run's wall time."""
    request_tokens_per_s_p50: float
    """Median decode tokens/s of one request."""
    deploys: int
    budget_changes: int
    plans_served: int
    """Distinct plans seen in force by finished requests (re-planning under load)."""
    failures: tuple[str, ...]
    """The first few failure messages."""
    control_failures: tuple[str, ...]
    probes: ProbeReport | None = None
    """The slow-reader and plan-switch memory probes (moeqos.bench.load_probes); None: not run."""

    @property
    def probe_problems(self) -> tuple[str, ...]:
        """What the probes found wrong: a slow reader that kept its slot, memory that grew."""
        return self.probes.problems() if self.probes is not None else ()

    def table(self) -> str:
        rows = (
            ("clients", f"{self.clients}"),
            ("duration", f"{self.duration_s:.1f} s"),
            ("requests completed", f"{self.completed}"),
            ("requests refused (RESOURCE_EXHAUSTED)", f"{self.refused}"),
            ("requests failed", f"{self.failed}"),
            ("time to first token p50 / p99", f"{self.ttft_p50_s:.3f} s / {self.ttft_p99_s:.3f} s"),
            ("tokens streamed", f"{self.tokens}"),
            ("tokens/s (all clients)", f"{self.tokens_per_s:.1f}"),
            ("tokens/s per request p50", f"{self.request_tokens_per_s_p50:.1f}"),
            ("deploys / budget changes", f"{self.deploys} / {self.budget_changes}"),
            ("control failures", f"{len(self.control_failures)}"),
            ("distinct plans served", f"{self.plans_served}"),
            *(self.probes.rows() if self.probes is not None else ()),
        )
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [
            f"failure: {text}" for text in (*self.failures, *self.control_failures, *self.probe_problems)
        ]
        return "\n".join(lines)


def summarize(
    clients: int,
    duration_s: float,
    records: Sequence[RequestRecord],
    deploys: int,
    budget_changes: int,
    control_failures: Sequence[str],
    probes: ProbeReport | None = None,
) -> LoadReport:
    """The report of a run from its request records and control outcomes."""
    done = [r for r in records if r.outcome == "completed"]
    ttft = np.array([r.ttft_s for r in done]) if done else np.zeros(1)
    decode = np.array([r.decode_tokens_per_s for r in done]) if done else np.zeros(1)
    tokens = sum(r.tokens for r in done)
    failures = [r.error for r in records if r.outcome == "failed"]
    return LoadReport(
        clients=clients,
        duration_s=duration_s,
        completed=len(done),
        refused=sum(r.outcome == "refused" for r in records),
        failed=len(failures),
        ttft_p50_s=float(np.percentile(ttft, 50)),
        ttft_p99_s=float(np.percentile(ttft, 99)),
        tokens=tokens,
        tokens_per_s=tokens / duration_s if duration_s > 0 else 0.0,
        request_tokens_per_s_p50=float(np.percentile(decode, 50)),
        deploys=deploys,
        budget_changes=budget_changes,
        plans_served=len({r.plan for r in done}),
        failures=tuple(failures[:5]),
        control_failures=tuple(control_failures),
        probes=probes,
    )
