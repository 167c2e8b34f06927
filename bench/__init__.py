"""Benchmarks: the raw torch pipeline vs the served system, measured in one run.

A developer tool, not part of the installed product: it runs from a source checkout
(``make bench``) with the dev dependencies, and starts the stack it measures with the same
helper as the integration tests (``tests.support.stack``), so it measures what they prove.
"""
