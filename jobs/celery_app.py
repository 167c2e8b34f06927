"""The Celery app of VisionQueue (``celery -A jobs.celery_app:app worker``).

Creating the app object reads no settings and makes no connection: the configuration is
built from the settings on first use, and the broker is reached on first publish.
Messages carry job ids only (JSON); images stay in the image store.

Three queues: jobs (classification), webhooks (deliveries, their own worker pool so a slow
receiver cannot hold classification threads) and maintenance (sweeps and purges, so they
never wait behind a backlog of jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from visionqueue.core.settings import Settings, get_settings

CLASSIFY_TASK = "visionqueue.classify_job"
WEBHOOK_TASK = "visionqueue.deliver_webhook"
SWEEP_TASK = "visionqueue.sweep"
PURGE_TASK = "visionqueue.purge"
# dataset batches (jobs.batches.tasks): plan a source, run its chunks, notify, sweep
BATCH_PLAN_TASK = "visionqueue.batch_plan"
BATCH_LANE_TASK = "visionqueue.batch_lane"
BATCH_WEBHOOK_TASK = "visionqueue.batch_webhook"
BATCH_SWEEP_TASK = "visionqueue.batch_sweep"


@dataclass(frozen=True)
class Queues:
    """The queue names of a deployment (``VQ_BROKER_QUEUE_PREFIX`` lets several share a broker)."""

    jobs: str
    webhooks: str
    maintenance: str

    @classmethod
    def of(cls, settings: Settings) -> Queues:
        prefix = settings.broker.queue_prefix
        return cls(f"{prefix}visionqueue", f"{prefix}webhooks", f"{prefix}maintenance")

    def all(self) -> tuple[str, str, str]:
        return (self.jobs, self.webhooks, self.maintenance)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration for ``settings``' broker."""
    broker = settings.broker_url
    transport_options: dict[str, Any] = {}
    transport: str | None = None
    if broker.startswith("filesystem://"):
        from jobs.fs_broker import PATH as transport  # kombu's, publishing atomically
        from jobs.fs_broker import queue_folder

        folder = str(queue_folder(settings))
        transport_options = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": str(settings.broker_dir / "processed"),
            "control_folder": str(settings.broker_dir / "control"),
            "store_processed": False,
            # kombu sleeps this long whenever every queue it reads is empty: the pick-up
            # delay of a lone job (kombu's default of 1 s was most of its latency)
            "polling_interval": settings.broker.poll_interval_s,
        }
    elif broker.startswith(("redis://", "rediss://", "sqs://")):
        visibility = settings.broker.visibility_timeout_s
        transport_options = {"visibility_timeout": visibility}
        if settings.broker.queue_prefix:
            # kombu keeps one unacked hash per Redis database: give each deployment its own
            transport_options["global_keyprefix"] = settings.broker.queue_prefix
        if not broker.startswith("sqs://"):
            # a Redis that accepts connections but hangs must not block a submission forever
            transport_options["socket_timeout"] = settings.broker.publish_timeout_s
            transport_options["socket_connect_timeout"] = settings.broker.publish_timeout_s
        if not broker.startswith("sqs://"):
            # kombu looks for a dead worker's unacked messages only every interval x throttle
            # seconds (10 x 10 by default): scan often enough that they come back about
            # ``visibility`` seconds after the worker died, not minutes later.
            transport_options["unacked_restore_interval"] = max(1, min(10, visibility // 4))
            transport_options["unacked_restore_throttle"] = 1
    worker = settings.worker
    queues = Queues.of(settings)
    return {
        "broker_url": broker,
        "broker_transport": transport,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker.publish_timeout_s,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in our database
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": worker.task_time_limit_s,
        "task_soft_time_limit": max(5, worker.task_time_limit_s - 10),
        "task_default_queue": queues.jobs,
        "task_routes": {
            CLASSIFY_TASK: {"queue": queues.jobs},
            WEBHOOK_TASK: {"queue": queues.webhooks},
            SWEEP_TASK: {"queue": queues.maintenance},
            PURGE_TASK: {"queue": queues.maintenance},
            BATCH_PLAN_TASK: {"queue": queues.jobs},
            BATCH_LANE_TASK: {"queue": queues.jobs},
            BATCH_WEBHOOK_TASK: {"queue": queues.webhooks},
            BATCH_SWEEP_TASK: {"queue": queues.maintenance},
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.3,
            "interval_max": 0.5,
        },
        "worker_send_task_events": True,  # Flower sees every task from received on
        # no "task-sent" event: it is a second broker publish on every submission (a
        # quarter of the front's submit CPU in a py-spy profile); queued jobs are in the
        # database and in the celery_queue_depth / vq_jobs{status} gauges
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "sweep": {"task": SWEEP_TASK, "schedule": settings.worker.sweep_interval_s},
            "purge": {"task": PURGE_TASK, "schedule": 3600.0},
            "batch-sweep": {"task": BATCH_SWEEP_TASK, "schedule": settings.worker.sweep_interval_s},
        },
    }


def ensure_broker_dirs(settings: Settings) -> None:
    """Create the filesystem broker's folders (embedded default), readable by our user only;
    other brokers need none."""
    if settings.broker_url.startswith("filesystem://"):
        settings.broker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.broker_dir.chmod(0o700)  # messages carry job ids and webhook URLs
        for sub in ("in", "processed", "control"):
            (settings.broker_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)


def create_celery_app(settings: Settings | None = None) -> Celery:
    """Build the Celery app for ``settings``; by default the process settings, read on first use."""
    celery = Celery("visionqueue", include=["jobs.tasks", "jobs.batches.tasks"])
    if settings is not None:
        celery.conf.update(celery_config(settings))
    else:
        # Evaluated when the configuration is first read, not at import.
        celery.add_defaults(lambda: celery_config(get_settings()))
    return celery


app = create_celery_app()
