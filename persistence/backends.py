"""What every process of VisionQueue holds: its settings, database engine and image store.

The front (``visionqueue.api.resources``) and the worker (``jobs.resources``) each extend it
with their own clients; both build this part the same way, once per process.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from persistence.db import get_engine
from persistence.images import ImageStore, build_image_store
from visionqueue.core.settings import Settings


@dataclass
class Backends:
    settings: Settings
    engine: Engine
    store: ImageStore


def open_backends(settings: Settings) -> tuple[Engine, ImageStore]:
    """Return this process's engine and image store for ``settings`` (no I/O yet)."""
    return get_engine(settings.database_url), build_image_store(settings)
