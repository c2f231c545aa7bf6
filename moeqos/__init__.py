"""moeqos: Mixture-of-Experts serving with per-expert precision and tier placement.

This package holds what the planner, the executors and the clients share and that never needs torch:
the domain types (`Plan`, `Profile`, `QosTarget`), the error hierarchy, the corpora names and the CLI.
"""

__version__ = "0.1.0"
