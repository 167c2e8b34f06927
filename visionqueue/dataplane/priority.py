"""The priority classes of classify requests: the one place that defines them.

A class travels with every ``ClassifyRequest`` from the route that made it to the transport
that carries its crops (``Transport.call``); the classifier's batch queue is where a class
would be honoured (docs/dataplane.md). Adding a class is one new member here: its value
orders it (lower is served first), its name is what settings and headers spell.
"""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """How urgent a classify request is; lower values are served first."""

    INTERACTIVE = 0  # a caller is waiting: /predict, every protocol route, the web page
    JOBS = 1  # an async job's worker

    @classmethod
    def parse(cls, name: str) -> Priority:
        """Return the class called ``name`` (any case); ValueError naming the classes otherwise."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            known = ", ".join(member.name.lower() for member in cls)
            raise ValueError(f"unknown priority {name!r}; known: {known}") from None


SYNC_PRIORITY = Priority.INTERACTIVE  # the default of every synchronous route
JOB_PRIORITY = Priority.JOBS  # the default of job work
