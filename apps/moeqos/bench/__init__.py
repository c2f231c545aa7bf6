"""Benchmark scripts that print tables (`python -m moeqos.bench.<name>`); speed goals are checked here, not in tests."""
