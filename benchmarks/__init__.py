"""Benchmarks: ``python -m benchmarks.run [--quick]``."""
