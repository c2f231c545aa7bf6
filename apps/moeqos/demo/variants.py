"""Before the demo measures any rate: every executor's variants built ahead are finished.

Once an executor has a profile it writes the variants of the profile's precisions in the background
(moeqos.executor.variant_warmup). That build waits while the executor's own generations decode, but it
cannot see another executor on the same host: in the demo's topology (two executors on one machine) one
executor's build ran beside the other's warm-up, the frontier calibrated by it, and the floor's window.
Measured on a 2-core Xeon with AMX and a 480 MiB L3 (2026-12-05): with the builds running beside them,
executor-b's floor was met in one run of three (its window read 51-59 tok/s against floors of 56-66
read off frontiers that predicted 55-67); with `MOEQOS_WARM_VARIANTS=off`, both targets were met in both
runs (58.9 and 61.8 tok/s against floors of 55.9 and 49.2). So the demo waits, up to `limit_s`, until
every executor says its build is done (or off, or refused), and says where each one stands meanwhile.

    wait_for_variants_ahead({"executor-a": "127.0.0.1:50061", ...}, say, limit_s=300)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from moeqos.client import ExecutorClient

Say = Callable[[str], None]

POLL_S = 1.0
"""How often each executor is asked (GetInfo) while a build runs."""
REPORT_EVERY_S = 15.0
"""Where the builds stand is said again after this long."""
PENDING = ("building", "not started")
"""How `variants_ahead` begins while a build is running or is still to start (see
VariantWarmup.describe); anything else (done, off, off: why) ends the wait for that executor."""


def wait_for_variants_ahead(
    executors: Mapping[str, str],
    say: Say,
    limit_s: float,
    poll_s: float = POLL_S,
    report_every_s: float = REPORT_EVERY_S,
) -> bool:
    """Wait until no executor of `executors` (name -> address) is building variants ahead; True when
    none was by `limit_s` seconds, else False after saying which still were (the demo goes on)."""
    start = time.monotonic()
    said_at = -report_every_s
    clients = {name: ExecutorClient(address) for name, address in executors.items()}
    try:
        while True:
            pending = {
                name: state
                for name, client in clients.items()
                if (state := client.info().variants_ahead).startswith(PENDING)
            }
            elapsed = time.monotonic() - start
            if not pending:
                if said_at >= 0:
                    say(f"variants built ahead: done after {elapsed:.0f}s")
                return True
            states = "; ".join(f"{name}: {state}" for name, state in pending.items())
            if elapsed >= limit_s:
                say(f"variants still building after {limit_s:g}s, going on (rates may read low): {states}")
                return False
            if elapsed - said_at >= report_every_s:
                say(f"waiting for the variants built ahead (a build slows the rates measured next): {states}")
                said_at = elapsed
            time.sleep(poll_s)
    finally:
        for client in clients.values():
            client.close()
