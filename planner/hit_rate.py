"""Hit rate of the `disk` tier's LRU slot pool (Che's approximation).

Model: each disk expert i is requested independently with rate `f_i` calls per token (its activation
frequency). An LRU pool of S slots keeps an expert resident for a "characteristic time" T (in tokens):
an expert is a hit if it was requested within the last T tokens, so hit_i = 1 - exp(-f_i T), where T
solves sum_i (1 - exp(-f_i T)) = S (the pool is full). With no more disk experts than slots, every
expert stays resident (hit = 1 once warm); with no slots, every call misses.
Reference: H. Che, Y. Tung, Z. Wang, "Hierarchical Web caching systems: modeling, design and
experimental results", IEEE JSAC 2002; shown accurate for LRU under independent requests.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq


def lru_hit_rates(frequencies: np.ndarray, slots: int) -> np.ndarray:
    """Per-expert hit probability of an LRU pool of `slots` shared by experts with these rates.

    `frequencies`: [D] calls per token of each disk expert (zeros allowed). Returns [D] in [0, 1].
    """
    freq = np.asarray(frequencies, dtype=float)
    active = freq > 0
    if slots <= 0 or not active.any():
        return np.zeros_like(freq)
    if int(active.sum()) <= slots:
        return np.where(active, 1.0, 0.0)
    rates = freq[active]

    def filled(log_t: float) -> float:
        return float(np.sum(-np.expm1(-rates * math.exp(log_t)))) - slots

    # filled() rises from -slots (T -> 0) to (active - slots) > 0 (T -> inf): one root in log T.
    low, high = math.log(1e-9 / rates.max()), math.log(1e9 / rates.min())
    characteristic = math.exp(brentq(filled, low, high, xtol=1e-10))
    hits = np.zeros_like(freq)
    hits[active] = -np.expm1(-rates * characteristic)
    return hits
