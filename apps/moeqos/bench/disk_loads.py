"""What one `disk`-tier miss costs: reading an expert file and building its kernel, per precision.

    python -m moeqos.bench.disk_loads [--model DIR] [--experts 16]

For each read mode (`cached`: the file's pages stay in the OS page cache; `uncached`: dropped after
every read, so each read goes to the device) and precision, the median over `--experts` different
experts (expert 0.. of layer 0..) of one load into a slot, CPU caches flushed before each, measured two
ways: from the portable file (read the codes, then repack them into the kernel's layout: what every
load did before packed files) and as the executor loads now (`VariantFactory.load`: the packed file
where the precision has one). Prints one table; ratios are within the same run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from moeqos.bench.report import table
from moeqos.core.precision import Precision
from moeqos.executor.config import ExecutorConfig
from moeqos.executor.costs import cold_median_over
from moeqos.executor.default_model.location import resolve_model_dir
from moeqos.executor.quant import QuantExpert
from moeqos.executor.runtime import ExecutorRuntime

PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)
READ_MODES = ("cached", "uncached")


def measure(model_dir: Path, mode: str, experts: int) -> list[list[object]]:
    """Rows (mode, precision, file KiB, portable ms, packed ms, speed-up) for one read mode."""
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="moeqos-disk-loads-") as cache:
        config = ExecutorConfig(model_dir, variant_cache_dir=Path(cache), disk_reads=mode)
        with ExecutorRuntime.load(config) as runtime:
            factory, device, group = runtime.factory, config.device, runtime.plan.group_size
            layer_experts = [
                (layer, expert)
                for layer in range(runtime.num_layers)
                for expert in range(runtime.num_experts)
            ]
            for precision in PRECISIONS:
                variants = [(layer, expert, precision, group) for layer, expert in layer_experts[:experts]]
                for variant in variants:
                    factory.ensure_file(variant, device)  # portable and (where one applies) packed files
                    factory.load(variant, device)  # leave each file as serving would (cached or not)

                def portable(variant: tuple, f=factory, p=precision) -> object:
                    return QuantExpert.from_state(f.read_state(f.path(variant)), p, group, device)

                def current(variant: tuple, f=factory) -> object:
                    return f.load(variant, device)

                before = cold_median_over(portable, variants, len(variants), device)
                now = cold_median_over(current, variants, len(variants), device)
                size = factory.path(variants[0]).stat().st_size
                rows.append([mode, precision.value, size // 1024, before * 1e3, now * 1e3, before / now])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moeqos.bench.disk_loads", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the default model)"
    )
    parser.add_argument("--experts", type=int, default=16, help="different experts timed per cell")
    args = parser.parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    rows = [row for mode in READ_MODES for row in measure(model_dir, mode, args.experts)]
    columns = ["disk reads", "precision", "file KiB", "portable ms", "now ms", "speed-up"]
    notes = [f"{model_dir.name}; median over {args.experts} experts, CPU caches flushed before each load"]
    print(table("disk tier: one miss, read + kernel layout", columns, rows, notes).render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
