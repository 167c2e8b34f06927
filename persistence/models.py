"""SQLAlchemy models of jobs, batches and their webhook deliveries (the schema Alembic migrates)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Owner of jobs submitted while authentication is off; NULL would defeat the
# (owner, idempotency_key) unique constraint, since NULLs never collide.
ANONYMOUS_OWNER = ""


class JobStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES = tuple(status.value for status in JobStatus)
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """Return a fresh job id (uuid4, 36 characters)."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Store aware datetimes as UTC and always read them back aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        # SQLite compares the stored text: keep one zone-less format so ordering holds.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One image classification request and its outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key"),
        CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name="status",
        ),
        # Pending sweep and per-status counts; also serves status-only lookups.
        Index(None, "status", "created_at"),
        # Listing a client's jobs newest first (keyset on created_at, id).
        Index(None, "owner", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    image_key: Mapped[str] = mapped_column(String(255))
    image_sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))
    image_size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(64), default=ANONYMOUS_OWNER, server_default="")
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # the model the client asked for (None = the default at processing time); model_tag
    # is the exact version that served it
    model_name: Mapped[str | None] = mapped_column(String(255))
    # submitted priority: high | normal (the jobs class of work) | low (bulk)
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    model_tag: Mapped[str | None] = mapped_column(String(255))
    weights_origin: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Processing: the worker that holds the job renews this lease while it runs it; once it
    # lapses the worker is presumed dead and the sweeper hands the job to another one.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    leased_by: Mapped[str | None] = mapped_column(String(128))

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r})"


class DeliveryLogColumns:
    """One logged delivery attempt: the columns the jobs' and the batches' logs share."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    succeeded: Mapped[bool] = mapped_column()
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(DeliveryLogColumns, Base):
    """One attempt to deliver a job event to the job's webhook URL."""

    __tablename__ = "webhook_deliveries"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )

    def __repr__(self) -> str:
        return f"WebhookDelivery(job_id={self.job_id!r}, attempt={self.attempt})"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    EXHAUSTED = "exhausted"


class OutboxColumns:
    """An event owed to a webhook URL: the columns the jobs' and the batches' outboxes share.

    All delivery state lives here: the next attempt's due time, the attempts made, and the
    claim of the attempt in flight. Broker messages only make delivery prompt.
    """

    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    destination: Mapped[str] = mapped_column(String(300))  # scheme://host:port of the URL
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Attempts made before the current retry series (a manual redelivery starts a new one).
    series_start: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    relayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    redelivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def _outbox_table_args() -> tuple[Any, ...]:
    return (
        CheckConstraint("status IN ('pending', 'delivered', 'exhausted')", name="status"),
        # The relay's due scan and the per-destination in-flight count.
        Index(None, "status", "next_attempt_at"),
        Index(None, "destination", "claimed_until"),
    )


class WebhookOutbox(OutboxColumns, Base):
    """The finished-job event owed to a job's webhook URL, written with the job's outcome."""

    __tablename__ = "webhook_outbox"
    __table_args__ = _outbox_table_args()

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )

    def __repr__(self) -> str:
        return f"WebhookOutbox(job_id={self.job_id!r}, status={self.status!r})"


class MaintenanceLock(Base):
    """A named lock with an expiry: one sweep or purge at a time across every worker."""

    __tablename__ = "maintenance_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobOutcomeCount(Base):
    """A running total of finished jobs, kept with every job that finishes.

    Rows: ``("success", "")``, ``("failure", CODE)``, ``("latency_bucket", LE)`` (jobs whose
    latency fell in that bucket, not cumulative), ``("latency_sum", "")``. Totals kept in
    the database stay right with any number of workers and hosts, survive restarts and the
    retention purge, and any front can report them (``image_task_*`` on its ``/metrics``).
    """

    __tablename__ = "job_outcome_counts"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class BatchStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


BATCH_FINAL_STATUSES = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED)


class Batch(Base):
    """One dataset batch: a source of objects, its plan (chunks) and its progress."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
            name="status",
        ),
        Index(None, "owner", "created_at", "id"),
        Index(None, "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(64), default=ANONYMOUS_OWNER, server_default="")
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.PENDING.value)
    source: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    # the output is the project's own store (no output requested): retention deletes its parts
    output_owned: Mapped[bool] = mapped_column(default=False, server_default=false())
    model_name: Mapped[str | None] = mapped_column(String(255))
    model_tag: Mapped[str | None] = mapped_column(String(255))
    top_k: Mapped[int] = mapped_column(Integer, default=5)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    # planning: keys listed into chunks so far (a restarted planner skips them), and whether
    # the listing ended (then ``total`` is final)
    planned_keys: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    planned_chunks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    planned: Mapped[bool] = mapped_column(default=False, server_default=false())
    total: Mapped[int | None] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)


class BatchWebhookOutbox(OutboxColumns, Base):
    """The end-of-batch event owed to a batch's webhook URL, written when the batch ends."""

    __tablename__ = "batch_webhook_outbox"
    __table_args__ = _outbox_table_args()

    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )


class BatchWebhookDelivery(DeliveryLogColumns, Base):
    """One attempt to deliver a batch's event to the batch's webhook URL."""

    __tablename__ = "batch_webhook_deliveries"

    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )


class BatchChunk(Base):
    """A leased slice of a batch's keys; ``fence`` grows with every claim, and only the
    claim that holds the current fence may store the chunk's lines."""

    __tablename__ = "batch_chunks"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'running', 'done')", name="status"),
        Index(None, "batch_id", "status", "lease_until"),
    )

    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    keys: Mapped[str] = mapped_column(Text)  # newline-separated keys, relative to the source
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    leased_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lines: Mapped[str | None] = mapped_column(Text)  # the chunk's JSON Lines, once done
    done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    part_written: Mapped[bool] = mapped_column(default=False, server_default=false())


class ModelPromotion(Base):
    """Which stored version a model name serves: one row per promoted name.

    ``sequence`` grows with every promotion of any name, so a classifier replica learns that
    something changed by reading one number (``persistence.promotions_repo``).
    """

    __tablename__ = "model_promotions"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    tag: Mapped[str] = mapped_column(String(255))
    previous: Mapped[str | None] = mapped_column(String(255))
    sequence: Mapped[int] = mapped_column(Integer)
    promoted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
