"""The priority classes of classify requests: the one place that defines them.

A class travels with every ``ClassifyRequest`` from the route that made it to the classifier
worker's priority queue (``priority_queue``), over every transport (docs/priority.md). Adding
a class is one new member here: its value orders it (lower is served first), its name is what
settings, headers and answers spell (``label``).
"""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """How urgent a classify request is; lower values are served first."""

    INTERACTIVE = 0  # a caller is waiting: /predict, every protocol route, the web page
    JOBS = 1  # an async job's worker (/v1/jobs high and normal, /classify, /api/upload-image)
    BULK = 2  # /v1/jobs with priority=low (and dataset batches)

    @property
    def label(self) -> str:
        """The class's name as answers, metrics and headers spell it."""
        return self.name.lower()

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
JOB_PRIORITIES = ("high", "normal", "low")  # POST /v1/jobs's ``priority``
PRIORITY_HEADER = "X-VQ-Work-Class"  # our job workers' /predict calls: jobs or bulk


def job_priority(priority: str) -> tuple[Priority, int]:
    """Return the class and the rank within it of a job's ``priority`` (high|normal|low)."""
    if priority == "low":
        return Priority.BULK, 0
    if priority in ("high", "normal"):
        return Priority.JOBS, 0 if priority == "high" else 1
    raise ValueError(f"priority must be one of {', '.join(JOB_PRIORITIES)}, not {priority!r}")
