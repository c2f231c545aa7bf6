"""The `moeqos` command line. Each module registers one group of subcommands; heavy imports happen
inside the command functions, so `moeqos --help` and the planner commands never import torch."""
