"""Build the native kernels for this machine and say which precisions they serve here:

    python -m moeqos.executor.quant.native

Run by scripts/setup.sh; an executor builds them at first use anyway. Exits 0 whether or not they
build: torch's ops are the fallback.
"""

from __future__ import annotations

import logging

from moeqos.executor.quant import native


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if native.library() is None:
        print("native kernels: not built; torch's ops serve every precision")
        return
    print(f"native kernels: {native.library_path(native.compiler() or 'cc')}", flush=True)
    for precision in ("int4", "int8", "bf16"):
        native.preferred(precision)


if __name__ == "__main__":
    main()
