"""Shared pytest configuration. Layers mirror the packages: tests/planner (pure), tests/executor (tiny
random Mixtrals), tests/service (real gRPC on loopback), tests/e2e (real processes), tests/model (the
embedded default model, marked slow)."""
