"""Cost curves `seconds = overhead + bytes / bandwidth`, fitted with non-negative least squares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls


@dataclass(frozen=True)
class CostCurve:
    """`seconds(bytes) = overhead_s + bytes / bandwidth_bps`, with the fit's residuals.

    `residuals_s[i]` is measured minus fitted seconds of point `points[i] = (bytes, seconds)`.
    """

    overhead_s: float
    bandwidth_bps: float
    points: tuple[tuple[int, float], ...] = ()
    residuals_s: tuple[float, ...] = ()

    def seconds(self, nbytes: float) -> float:
        return self.overhead_s + nbytes / self.bandwidth_bps

    @property
    def max_relative_residual(self) -> float:
        """Largest |residual| / measured seconds (0 without points)."""
        rel = [abs(r) / s for r, (_, s) in zip(self.residuals_s, self.points, strict=True) if s > 0]
        return max(rel, default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "overhead_s": self.overhead_s,
            "bandwidth_bps": self.bandwidth_bps,
            "points": [list(p) for p in self.points],
            "residuals_s": list(self.residuals_s),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostCurve:
        return cls(
            float(data["overhead_s"]),
            float(data["bandwidth_bps"]),
            tuple((int(b), float(s)) for b, s in data.get("points", [])),
            tuple(float(r) for r in data.get("residuals_s", [])),
        )


def fit_curve(points: Sequence[tuple[int, float]]) -> CostCurve:
    """Fit overhead >= 0 and 1/bandwidth >= 0 to (bytes, seconds) points.

    With a single distinct size the overhead cannot be told from bandwidth: it is set to 0 and the
    bandwidth to bytes / median seconds (a pure bandwidth model, conservative for larger sizes).
    """
    if not points:
        raise ValueError("a cost curve needs at least one measured point")
    sizes = np.array([b for b, _ in points], dtype=float)  # [N]
    seconds = np.array([s for _, s in points], dtype=float)  # [N]
    if np.unique(sizes).size < 2:
        overhead, inverse_bw = 0.0, float(np.median(seconds) / sizes[0])
    else:
        scale = sizes.max()  # bytes scaled to ~1 so both columns are well conditioned
        design = np.stack([np.ones_like(sizes), sizes / scale], axis=1)  # [N, 2]
        (overhead, slope), _ = nnls(design, seconds)
        inverse_bw = slope / scale
    inverse_bw = max(float(inverse_bw), 1e-18)  # a zero slope would mean infinite bandwidth
    residuals = seconds - (overhead + sizes * inverse_bw)
    return CostCurve(
        float(overhead),
        float(1.0 / inverse_bw),
        tuple((int(b), float(s)) for b, s in points),
        tuple(float(r) for r in residuals),
    )
