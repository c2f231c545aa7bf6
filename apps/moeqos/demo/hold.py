"""Whether a throughput floor holds, as the executor itself measures it, once its QoS loop has had its
chance: the demo's met/missed for a floor.

One generation right after Deploy says little about a floor: it runs before the executor's loop has
seen a window, on whatever the machine does at that moment. Here the demo keeps the executor decoding
(generations back to back) and reads its QoS status (GetInfo) every `poll_s`, until the executor's
own window has met the floor in `confirm` polls in a row (no re-plan in flight), or `hold_s` passed.
The verdict is the executor's last measured window against the floor; how long it waited, how
often the loop changed the plan, what each switch cost, and how far the executor's variants built
ahead were (a switch to a variant not built yet quantizes it) are reported with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from moeqos.client import ExecutorClient
from moeqos.core.service_types import QosState, QosStatus, Sampling


@dataclass(frozen=True)
class HoldSettings:
    hold_s: float = 40.0
    """The longest the demo waits for the loop."""
    poll_s: float = 1.0
    confirm: int = 3
    """Polls in a row with the executor's window at or above the floor that end the wait early."""


@dataclass(frozen=True)
class Held:
    """How the floor stood when the demo stopped waiting."""

    floor_tokens_per_s: float
    waited_s: float
    measured_tokens_per_s: float | None
    """The executor's own decode rate over its last window (None: too few tokens)."""
    window_s: float
    state: str
    """The loop's verdict then (met, violated, re-planning)."""
    loop: bool
    """Whether the executor runs the closed loop (False: open loop, measured only)."""
    plan_changes: int
    """Plan changes seen while waiting (the loop's re-plans)."""
    final_plan_spec: str
    met: bool
    """measured_tokens_per_s >= the floor."""
    switch_seconds: tuple[float, ...] = ()
    """Seconds of each plan switch seen while waiting, as the executor reported it."""
    variants_ahead: str = ""
    """The executor's variants built ahead when the wait ended (GetInfo)."""


def hold_floor(
    address: str,
    floor: float,
    settings: HoldSettings,
    prompt: str,
    sleep: Callable[[float], None] = time.sleep,
) -> Held | None:
    """Keep `address` decoding and wait for its floor (module docstring); None when the executor reports
    no QoS status (an executor without the loop)."""
    stop = threading.Event()
    streamer = threading.Thread(target=_decode, args=(address, prompt, stop), daemon=True)
    start = time.monotonic()
    streamer.start()
    try:
        with ExecutorClient(address) as client:
            info = client.info()
            if info.qos is None:
                return None
            plans, status, in_a_row = [info.plan.to_spec()], info.qos, 0
            switches: list[float] = []
            while time.monotonic() - start < settings.hold_s:
                sleep(settings.poll_s)
                info = client.info()
                status = info.qos or status
                if info.plan.to_spec() != plans[-1]:
                    plans.append(info.plan.to_spec())
                    if info.last_switch is not None:
                        switches.append(info.last_switch.seconds)
                in_a_row = in_a_row + 1 if _meets(status, floor) else 0
                if in_a_row >= settings.confirm:
                    break
    finally:
        stop.set()
        streamer.join(60)
    held = _held(status, floor, time.monotonic() - start, plans)
    return replace(held, switch_seconds=tuple(switches), variants_ahead=info.variants_ahead)


def _meets(status: QosStatus, floor: float) -> bool:
    measured = status.measured_tokens_per_s
    return status.state is not QosState.REPLANNING and measured is not None and measured >= floor


def _held(status: QosStatus, floor: float, waited: float, plans: list[str]) -> Held:
    measured = status.measured_tokens_per_s
    return Held(
        floor_tokens_per_s=floor,
        waited_s=waited,
        measured_tokens_per_s=measured,
        window_s=status.window_seconds,
        state=status.state.value,
        loop=status.loop,
        plan_changes=len(plans) - 1,
        final_plan_spec=plans[-1],
        met=measured is not None and measured >= floor,
    )


def _decode(address: str, prompt: str, stop: threading.Event) -> None:
    """Generations back to back until `stop` (the executor's window needs tokens to measure)."""
    with ExecutorClient(address) as client:
        seed = 0
        while not stop.is_set():
            for _ in client.generate(prompt, Sampling(max_tokens=32, seed=seed)):
                if stop.is_set():
                    break
            seed += 1
