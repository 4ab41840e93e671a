"""Benchmarks; importable so tests can share the reference implementations."""
