"""Worker start-up, in the order it happens: logging, then (once per worker) the secrets check,
the backends (broker folders, migrations) and the metrics server, then (per pool process)
fresh resources, and a first sweep once the worker consumes.

Connected to Celery's signals when ``jobs.tasks`` is imported (``include`` of the app).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import (
    beat_embedded_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
)

from visionqueue.core.logging_setup import configure_logging
from visionqueue.core.parent_death import die_with
from visionqueue.core.settings import Settings, get_settings
from visionqueue.dataplane.cpu_priority import lower_this_process

logger = logging.getLogger(__name__)

# the worker's own pid, recorded at worker_init: its embedded beat is forked from it and must
# know whom to die with even when the worker is already gone by the time the beat starts up
_worker_pid: int | None = None


def prepare_backends(settings: Settings) -> None:
    """Create the embedded broker's folders and upgrade the database (a no-op when current)."""
    from jobs.celery_app import ensure_broker_dirs
    from persistence.migrate import upgrade_database

    ensure_broker_dirs(settings)
    upgrade_database(settings.database_url)


def refuse_bad_secrets(settings: Settings) -> None:
    """Exit when production runs with placeholder or malformed secrets."""
    try:
        settings.check_secrets()
    except ValueError as exc:
        # SystemExit: Celery swallows ordinary exceptions raised in worker_init
        raise SystemExit(f"refusing to start: {exc}") from None


def start_metrics_server(settings: Settings) -> None:
    """Serve the worker's Prometheus metrics on ``VQ_WORKER_METRICS_PORT`` (0 = off)."""
    from prometheus_client import start_http_server

    from jobs.metrics import prime_failure_series

    port = settings.observability.worker_metrics_port
    if not port:
        return
    prime_failure_series()
    try:
        start_http_server(port, addr=settings.server.host)
    except OSError as exc:  # another worker on this host has the port
        logger.warning("worker metrics port %d busy: %s", port, exc)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # connected, so Celery leaves logging to us: VQ_LOG_LEVEL/VQ_LOG_JSON, ids, redaction
    from jobs.celery_app import BATCH_SWEEP_TASK, PURGE_TASK, SWEEP_TASK

    housekeeping = (SWEEP_TASK, PURGE_TASK, BATCH_SWEEP_TASK)
    configure_logging(get_settings(), housekeeping_tasks=housekeeping)


@worker_init.connect
def _start_worker(**_: Any) -> None:
    global _worker_pid
    _worker_pid = os.getpid()
    settings = get_settings()
    refuse_bad_secrets(settings)
    # no person waits on a worker: on a shared host its CPU goes to /predict first
    lower_this_process(settings.model.background_nice)
    prepare_backends(settings)
    start_metrics_server(settings)


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    # a forked pool child must build its own engine and clients
    from persistence.db import dispose_engines

    dispose_engines()


@worker_ready.connect
def _sweep_on_start(sender: Any = None, **_: Any) -> None:
    # Jobs a dead worker left behind resume as soon as a worker is back, not a sweep later.
    from jobs.celery_app import SWEEP_TASK

    try:
        sender.app.send_task(SWEEP_TASK)
    except Exception:  # kombu errors differ by transport; beat's next sweep covers it
        logger.warning("first sweep not queued; the next scheduled one will run")


@beat_embedded_init.connect
def _die_with_the_worker(**_: Any) -> None:
    """The beat a worker embeds (``--beat``) is a child process: it stops when the worker dies.

    A worker SIGKILLed (the OOM killer, a crash) otherwise left its beat behind, an orphan
    still scheduling sweeps, which ``stop`` and ``kill`` of the worker's pid never reached.
    """
    # not getppid() here: a worker killed between forking its beat and this line has already
    # handed the beat to init, and the beat would arm itself against init and live on
    arm = die_with(_worker_pid if _worker_pid is not None else os.getppid())
    if arm is not None:
        arm()
