"""Benchmarks: every goal is a ratio against a baseline measured in the same run."""
