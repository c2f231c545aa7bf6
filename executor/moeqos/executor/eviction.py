"""The disk tier's slot pool (mechanism) and the policy that picks what to evict (LRU).

`SlotPool` holds at most `slots` loaded experts and counts hits, misses and bytes loaded; which entry
leaves when a new one needs a slot is the `EvictionPolicy`'s call, so a different policy (LFU, a
plan-aware one) is a new small class, not a change to the pool.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class EvictionPolicy(Protocol[K]):
    """Decides which resident key leaves the pool."""

    def touched(self, key: K) -> None:
        """`key` was used (hit or fresh load)."""

    def removed(self, key: K) -> None:
        """`key` left the pool."""

    def victim(self) -> K:
        """The key to evict now (the pool is full)."""


class LruPolicy(Generic[K]):
    """Evict the least recently used key."""

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def touched(self, key: K) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def removed(self, key: K) -> None:
        self._order.pop(key, None)

    def victim(self) -> K:
        return next(iter(self._order))


@dataclass
class PoolStats:
    """Counters of a slot pool since it was made."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_loaded: int = 0


class SlotPool(Generic[K, V]):
    """At most `slots` loaded values; `get` loads on a miss, evicting the policy's victim if full."""

    def __init__(self, slots: int, policy: EvictionPolicy[K] | None = None) -> None:
        if slots < 1:
            raise ValueError(f"a slot pool needs at least one slot, got {slots}")
        self.slots = slots
        self.policy: EvictionPolicy[K] = policy if policy is not None else LruPolicy()
        self.stats = PoolStats()
        self._resident: dict[K, V] = {}

    def get(self, key: K, load: Callable[[], tuple[V, int]]) -> V:
        """The value for `key`; on a miss `load()` returns (value, bytes read) and takes a slot."""
        if key in self._resident:
            self.stats.hits += 1
            self.policy.touched(key)
            return self._resident[key]
        self.stats.misses += 1
        value, nbytes = load()
        if len(self._resident) >= self.slots:
            self.discard(self.policy.victim())
            self.stats.evictions += 1
        self._resident[key] = value
        self.stats.bytes_loaded += nbytes
        self.policy.touched(key)
        return value

    def discard(self, key: K) -> None:
        """Drop `key` if resident (e.g. its plan assignment changed)."""
        if key in self._resident:
            del self._resident[key]
            self.policy.removed(key)

    def resident(self) -> list[K]:
        return list(self._resident)

    def __len__(self) -> int:
        return len(self._resident)
