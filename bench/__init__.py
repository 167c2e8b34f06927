"""Benchmarks: the raw torch pipeline vs the served system, measured in one run."""
