"""Stored versions shared by every classifier replica through a bucket (``VQ_S3_MODELS_BUCKET``).

An import publishes the new version (BentoML's export of it, ``NAME/VERSION.bentomodel``);
a classifier replica fetches what it serves before it loads it, at start and on a promotion,
into its own BentoML store. A version is immutable, so a copy is never refreshed. The bucket
itself is ``persistence.model_bucket.ModelBucket`` (any object with the methods below).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class ModelArchives(Protocol):
    """Where version archives are kept."""

    def versions(self, name: str) -> list[str]: ...

    def has(self, name: str, version: str) -> bool: ...

    def upload(self, name: str, version: str, path: Path) -> None: ...

    def download(self, name: str, version: str, path: Path) -> None: ...


def _local_versions(name: str) -> set[str]:
    from model_store.store import list_versions

    return {v.tag.split(":", 1)[1] for v in list_versions(name)}


def publish(tag: str, archives: ModelArchives) -> bool:
    """Upload stored version ``tag`` unless the bucket has it; True if uploaded."""
    import bentoml

    from model_store.store import get_model

    stored = get_model(tag)
    name, version = stored.tag.split(":", 1)
    if archives.has(name, version):
        return False
    with tempfile.TemporaryDirectory(prefix="vq-export-") as folder:
        path = Path(folder) / f"{version}.bentomodel"
        bentoml.models.export_model(stored.tag, str(path))
        archives.upload(name, version, path)
    logger.info("published %s to the shared model bucket", stored.tag)
    return True


def fetch(tag: str, archives: ModelArchives | None) -> list[str]:
    """Bring ``tag`` (``NAME:VERSION``, or every version for ``NAME`` / ``NAME:latest``) here.

    Returns the tags fetched; versions already in the local store are left alone. Without a
    bucket (``archives`` None) there is nothing to fetch.
    """
    import bentoml
    from bentoml.exceptions import BentoMLException

    if archives is None:
        return []
    name, _, version = tag.partition(":")
    wanted = archives.versions(name) if version in ("", "latest") else [version]
    missing = [v for v in wanted if v not in _local_versions(name)]
    fetched: list[str] = []
    for found in missing:
        if not archives.has(name, found):
            continue  # not shared: the local store's answer (get_model) decides
        with tempfile.TemporaryDirectory(prefix="vq-fetch-") as folder:
            path = Path(folder) / f"{found}.bentomodel"
            archives.download(name, found, path)
            try:
                bentoml.models.import_model(str(path))
            except BentoMLException as exc:
                if "already exists" not in str(exc):  # another worker of this host won
                    raise
        fetched.append(f"{name}:{found}")
        logger.info("fetched %s:%s from the shared model bucket", name, found)
    return fetched
