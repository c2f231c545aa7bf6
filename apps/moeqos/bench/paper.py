"""Section `paper`: the what-if frontier for Mixtral-8x7B on an A100-like machine beside the paper.

arXiv 2407.14417 reports, for Mixtral-8x7B on one A100 with experts in 16 or 4 bits and those that do
not fit offloaded to the host, throughput from 0.63 to 13.00 tokens/s with a perplexity increase of
at most 0.58. The planner's analytic what-if profiles (moeqos.planner.whatif, moeqos.planner.paper) give the same
ranges for a few host-offload scenarios on `a100-80gb`; the table puts them side by side and the
notes carry the planner's explanation of the differences (moeqos.planner.paper.EXPLANATION).
"""

from __future__ import annotations

from typing import Any

from moeqos.bench.metrics import ratio
from moeqos.bench.report import SectionResult, table

POINTS = 12


def run(ctx: Any) -> SectionResult:
    """Compare each what-if scenario's frontier span with the paper's (the first span)."""
    from moeqos.planner.paper import EXPLANATION, paper_comparison

    spans = paper_comparison(POINTS)
    paper = spans[0]
    rows = [
        [
            s.scenario,
            s.min_tokens_per_s,
            s.max_tokens_per_s,
            ratio(s.max_tokens_per_s, s.min_tokens_per_s),
            s.max_ppl_increase,
            ratio(s.min_tokens_per_s, paper.min_tokens_per_s),
            ratio(s.max_tokens_per_s, paper.max_tokens_per_s),
        ]
        for s in spans
    ]
    columns = ["scenario", "min tok/s", "max tok/s", "range", "max ppl increase", "min/paper", "max/paper"]
    notes = [line.strip() for line in EXPLANATION.splitlines() if line.strip()]
    result = SectionResult("paper")
    result.tables.append(
        table("paper: Mixtral-8x7B on a100-80gb, what-if vs arXiv 2407.14417", columns, rows, notes)
    )
    result.data = {
        "spans": [
            {
                "scenario": s.scenario,
                "min_tokens_per_s": s.min_tokens_per_s,
                "max_tokens_per_s": s.max_tokens_per_s,
                "max_ppl_increase": s.max_ppl_increase,
                "frontier": [p.to_dict() for p in s.points],
            }
            for s in spans
        ]
    }
    return result
