"""Before the demo asks for frontiers: every executor without a profile measures one, all at once, and
the user sees each one's progress.

A profile is measured on first use and kept (MOEQOS_PROFILE_PATH). Left to the planner's first
Frontier call, one executor measured while the other waited behind it, silently, under one deadline
that a slow machine outran (2026-12-04, a CPU without native bf16: past 900 s for the first profile).
Here each executor's MeasureProfile stream runs at once (each executor decodes on its own threads) and
the only deadline is on progress: a stream that reports nothing for `stall_s` fails the demo.

    measure_missing_profiles({"executor-a": "127.0.0.1:50061", ...}, say, stall_s=600)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from moeqos.client import AsyncExecutorClient
from moeqos.core.errors import Unavailable
from moeqos.core.profile import Profile

Say = Callable[[str], None]

REPORT_EVERY_S = 30.0
"""A stage still running is reported again after this long (a new stage is reported at once)."""


def measure_missing_profiles(
    executors: Mapping[str, str], say: Say, stall_s: float, report_every_s: float = REPORT_EVERY_S
) -> list[str]:
    """Measure the profile (with its quality plans) of each executor that has none cached, all at once;
    return the names measured. Unavailable when one reports no progress for `stall_s` seconds."""
    return asyncio.run(_measure_all(executors, say, stall_s, report_every_s))


async def _measure_all(
    executors: Mapping[str, str], say: Say, stall_s: float, report_every_s: float
) -> list[str]:
    missing = [name for name, address in executors.items() if not await _cached(address)]
    if missing:
        say(f"measuring the profiles of {', '.join(missing)} at once (first start; kept for later runs)")
        await asyncio.gather(
            *(_measure(name, executors[name], say, stall_s, report_every_s) for name in missing)
        )
    return missing


async def _cached(address: str) -> bool:
    async with AsyncExecutorClient(address) as client:
        return (await client.info()).profile_cached


async def _measure(name: str, address: str, say: Say, stall_s: float, report_every_s: float) -> None:
    start = time.monotonic()
    reported = ("", -report_every_s)  # (stage, seconds since start) of the last line printed
    async with AsyncExecutorClient(address) as client:
        events = client.measure_profile(measure_quality=True)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(anext(events), stall_s)
                except StopAsyncIteration:
                    raise Unavailable(f"{name}'s profile stream ended without a profile") from None
                except TimeoutError:
                    raise Unavailable(
                        f"{name} reported no profile progress for {stall_s:g}s (stage {reported[0] or 'none'})"
                    ) from None
                elapsed = time.monotonic() - start
                if isinstance(event, Profile):
                    say(f"{name}: profile measured in {elapsed:.0f}s")
                    return
                if event.stage != reported[0] or elapsed - reported[1] >= report_every_s:
                    say(f"{name}: profile {event.stage} {event.done}/{event.total} ({elapsed:.0f}s)")
                    reported = (event.stage, elapsed)
        finally:
            await events.aclose()
