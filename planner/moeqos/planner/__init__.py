"""The planner's pure core: cost models fitted to a Profile, an exact MILP solver and what-if profiles (no torch)."""
