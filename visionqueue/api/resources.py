"""Resources of a front worker process: engine, image store, Celery app (built at start-up)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from persistence.backends import Backends, open_backends
from persistence.db import session_scope
from visionqueue.core.errors import StorageUnavailable, VQError
from visionqueue.core.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class FrontResources(Backends):
    celery: Any


def build_front_resources(settings: Settings) -> FrontResources:
    """Create the front's resources; the bucket is created now if the store answers."""
    from jobs.celery_app import create_celery_app, ensure_broker_dirs

    ensure_broker_dirs(settings)
    celery_app = create_celery_app(settings)

    engine, store = open_backends(settings)
    try:
        store.ensure_bucket()
    except StorageUnavailable:
        logger.warning("image store unavailable at start-up; /readyz reports it until it answers")
    return FrontResources(settings, engine, store, celery_app)


def check_backends(res: FrontResources) -> dict[str, str]:
    """Probe the database, the image store and the broker; return name -> 'ok' or a reason."""
    checks: dict[str, str] = {}
    try:
        with session_scope(res.engine) as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except VQError as exc:
        checks["database"] = exc.message
    try:
        res.store.check()
        checks["storage"] = "ok"
    except VQError as exc:
        checks["storage"] = exc.message
    try:
        with res.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception:  # kombu raises many transport-specific errors
        checks["broker"] = "the broker is unavailable"
    return checks
