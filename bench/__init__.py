"""Benchmark scripts that print tables (`python -m bench.<name>`); speed goals are checked here, not in tests."""
