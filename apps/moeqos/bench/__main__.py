"""`python -m moeqos.bench`: the benchmark suite (see moeqos.bench.runner)."""

import sys

from moeqos.bench.runner import main

sys.exit(main())
