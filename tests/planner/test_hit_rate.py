"""The disk pool's hit-rate model against a simulated LRU pool fed the way decoding feeds it."""

from __future__ import annotations

import numpy as np
import pytest
from moeqos.planner.hit_rate import lru_hit_rates


def simulate_decode(
    router: np.ndarray, on_disk: np.ndarray, slots: int, tokens: int, seed: int
) -> tuple[float, np.ndarray]:
    """(pool hit rate, [L, E] calls per token) of decoding `tokens` tokens, layer by layer, top-2.

    `router`: [L, E] routing weights per layer; each token picks 2 experts per layer without
    replacement in proportion to them (Gumbel top-k), and the disk ones go through an LRU pool.
    """
    rng = np.random.default_rng(seed)
    layers, experts = router.shape
    gumbel = rng.gumbel(size=(tokens, layers, experts))  # [T, L, E]
    chosen = np.argsort(-(np.log(router)[None] + gumbel), axis=2)[:, :, :2]  # [T, L, 2]
    pool: list[tuple[int, int]] = []
    hits = calls = 0
    counts = np.zeros((layers, experts))
    for token in chosen:
        for layer, picked in enumerate(token):
            for expert in picked:
                counts[layer, expert] += 1
                if not on_disk[layer, expert]:
                    continue
                key, calls = (layer, int(expert)), calls + 1
                if key in pool:
                    hits += 1
                    pool.remove(key)
                elif len(pool) == slots:
                    pool.pop(0)
                pool.append(key)
    return hits / max(calls, 1), counts / tokens


@pytest.mark.parametrize(
    "layers, disk_share, slots, concentration, seed",
    [
        (24, 0.5, 8, 1.0, 0),  # many frequent disk experts, few slots: a cyclic scan, LRU misses
        (24, 0.1, 8, 1.0, 1),  # a few more disk experts than slots
        (24, 0.1, 8, 0.3, 2),  # skewed routing: the hot disk experts stay
        (8, 0.5, 8, 0.5, 3),
        (8, 0.5, 16, 0.5, 4),
        (24, 0.5, 32, 0.3, 5),
    ],
)
def test_hit_rate_matches_a_simulated_decode(
    layers: int, disk_share: float, slots: int, concentration: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    router = rng.dirichlet(np.ones(8) * concentration, size=layers)  # [L, 8]
    on_disk = rng.random((layers, 8)) < disk_share  # [L, 8]
    simulated, frequency = simulate_decode(router, on_disk, slots, tokens=1500, seed=seed)
    rates = frequency[on_disk]  # [D]
    predicted = float((lru_hit_rates(rates, slots) * rates).sum() / rates.sum())
    assert predicted == pytest.approx(simulated, abs=0.05)


def test_a_cyclic_scan_of_more_experts_than_slots_misses() -> None:
    """Every disk expert called every token, one more than the slots: LRU evicts each just before use."""
    assert lru_hit_rates(np.ones(9), 8) == pytest.approx(np.zeros(9), abs=1e-9)


def test_experts_that_fit_the_pool_always_hit_and_unused_ones_never() -> None:
    hits = lru_hit_rates(np.array([0.5, 0.0, 0.2, 1.0]), 3)
    assert hits.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_no_slots_means_no_hits() -> None:
    assert lru_hit_rates(np.array([0.9, 0.4]), 0).tolist() == [0.0, 0.0]


def test_a_rarely_used_expert_among_hot_ones_hits_less() -> None:
    """Hot experts come back within a token or two; a rare one waits long enough to be evicted."""
    hits = lru_hit_rates(np.array([0.9] * 6 + [0.01]), 6)
    assert hits[:6].min() > 0.5 > 0.2 > hits[6]
