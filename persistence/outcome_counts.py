"""Running totals of finished jobs and webhook attempts, kept in the database as they happen.

``record`` runs in the transaction that finishes the job (``jobs_repo``), and
``record_delivery`` in the one that appends an attempt to the delivery log
(``deliveries_repo.record_attempt``), so each counts once however many workers, hosts or
redeliveries there are, and totals survive restarts and the retention purge. ``read``
returns them for the front's ``/metrics``.

A transaction's counts are summed in the session and written when it commits, one upsert per
row in (name, label) order: a worker that finishes a batch of jobs in one transaction
touches each row once, and two workers finishing batches together lock the rows they share
in the same order, so they never deadlock on them (per-job upserts in job order did: one
batch's 0.5 s job against the other's 1 s job).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, SessionTransaction

from persistence.models import JobOutcomeCount

# Upper bounds (seconds) of the job-latency histogram; the worker's uses the same.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
# Upper bounds (seconds) of the webhook-attempt histogram; the worker's uses the same.
WEBHOOK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
INF = "+Inf"
# where a session keeps the counts its transaction owes: {(name, label): amount}
_OWED = "vq_outcome_counts"


@dataclass
class OutcomeTotals:
    success: float = 0.0
    failures: dict[str, float] = field(default_factory=dict)
    latency_buckets: dict[str, float] = field(default_factory=dict)  # per bucket, not cumulative
    latency_sum: float = 0.0
    webhook_success: float = 0.0
    webhook_failures: dict[str, float] = field(default_factory=dict)  # by error
    webhook_latency_buckets: dict[str, float] = field(default_factory=dict)  # not cumulative
    webhook_latency_sum: float = 0.0


def bucket_label(latency_s: float, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> str:
    """Return the label of the histogram bucket ``latency_s`` falls in."""
    index = bisect.bisect_left(buckets, latency_s)
    return str(float(buckets[index])) if index < len(buckets) else INF


def _add(session: Session, name: str, label: str, amount: float) -> None:
    owed: dict[tuple[str, str], float] = session.info.setdefault(_OWED, {})
    owed[(name, label)] = owed.get((name, label), 0.0) + amount


@event.listens_for(Session, "before_commit")
def _write_owed(session: Session) -> None:
    """Add what the committing transaction owes to the totals, rows in key order."""
    owed: dict[tuple[str, str], float] = session.info.pop(_OWED, {})
    if not owed:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for (name, label), amount in sorted(owed.items()):
        stmt = insert(JobOutcomeCount).values(name=name, label=label, value=amount)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name", "label"],
            set_={"value": JobOutcomeCount.value + stmt.excluded.value},
        )
        session.execute(stmt)


@event.listens_for(Session, "after_soft_rollback")
def _forget_owed(session: Session, previous_transaction: SessionTransaction) -> None:
    """A transaction rolled back owes nothing: its jobs did not finish."""
    if previous_transaction.parent is None:  # the outermost one (no savepoints here)
        session.info.pop(_OWED, None)


def record(session: Session, status: str, code: str | None, latency_s: float) -> None:
    """Count one job that just finished as ``status`` (``completed`` or ``failed``), when
    the transaction commits."""
    if status == "completed":
        _add(session, "latency_bucket", bucket_label(latency_s), 1)
        _add(session, "latency_sum", "", latency_s)
        _add(session, "success", "", 1)
    else:
        _add(session, "failure", code or "", 1)


def record_delivery(session: Session, succeeded: bool, error: str | None, latency_s: float) -> None:
    """Count one webhook attempt just appended to the delivery log, when the transaction
    commits."""
    _add(session, "webhook_latency_bucket", bucket_label(latency_s, WEBHOOK_BUCKETS), 1)
    _add(session, "webhook_latency_sum", "", latency_s)
    if succeeded:
        _add(session, "webhook_success", "", 1)
    else:
        _add(session, "webhook_failure", (error or "unknown")[:64], 1)  # the label column's size


def read(session: Session) -> OutcomeTotals:
    """Return every running total."""
    totals = OutcomeTotals()
    for row in session.execute(select(JobOutcomeCount)).scalars():
        if row.name == "success":
            totals.success = row.value
        elif row.name == "failure":
            totals.failures[row.label] = row.value
        elif row.name == "latency_bucket":
            totals.latency_buckets[row.label] = row.value
        elif row.name == "latency_sum":
            totals.latency_sum = row.value
        elif row.name == "webhook_success":
            totals.webhook_success = row.value
        elif row.name == "webhook_failure":
            totals.webhook_failures[row.label] = row.value
        elif row.name == "webhook_latency_bucket":
            totals.webhook_latency_buckets[row.label] = row.value
        elif row.name == "webhook_latency_sum":
            totals.webhook_latency_sum = row.value
    return totals
