"""Model versions stored once for every classifier replica: one archive per version in a bucket.

``VQ_S3_MODELS_BUCKET`` on ``VQ_S3_ENDPOINT`` holds ``NAME/VERSION.bentomodel`` (BentoML's
export of a stored version). ``model_store.shared`` decides what to upload and fetch; this
module only moves files, and maps the SDK's errors to ``StorageUnavailable``.
"""

from __future__ import annotations

import re
from pathlib import Path

from minio import Minio
from minio.error import S3Error

from persistence.s3_images import (
    _MISSING_CODES,
    _http_client,
    _storage_errors,
    create_bucket_if_missing,
    split_endpoint,
)
from visionqueue.core.settings import Settings

SUFFIX = ".bentomodel"
# BentoML's tag rules: names and versions are lowercase words, dots, dashes, underscores
_PART = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def archive_key(name: str, version: str) -> str:
    """The object key of one stored version's archive."""
    if not (_PART.match(name) and _PART.match(version)):
        raise ValueError(f"not a stored model version: {name}:{version}")
    return f"{name}/{version}{SUFFIX}"


class ModelBucket:
    """The bucket of model archives (files in and out, nothing else)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        timeout_s: float = 60.0,
    ) -> None:
        host, secure = split_endpoint(endpoint)
        self.bucket = bucket
        self._client = Minio(
            host,
            access_key,
            secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(timeout_s, retries=3),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (a concurrent creator is fine)."""
        create_bucket_if_missing(self._client, self.bucket)

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` the bucket holds (key order)."""
        archive_key(name, "x")  # refuses a name that is no tag's
        found: list[str] = []
        with _storage_errors():
            for obj in self._client.list_objects(self.bucket, prefix=f"{name}/"):
                key = obj.object_name or ""
                if key.endswith(SUFFIX) and "/" not in key[len(name) + 1 :]:
                    found.append(key[len(name) + 1 : -len(SUFFIX)])
        return found

    def has(self, name: str, version: str) -> bool:
        with _storage_errors():
            try:
                self._client.stat_object(self.bucket, archive_key(name, version))
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    return False
                raise
        return True

    def upload(self, name: str, version: str, path: Path) -> None:
        """Store the archive at ``path`` (a version is immutable: the same bytes again)."""
        with _storage_errors():
            self._client.fput_object(self.bucket, archive_key(name, version), str(path))

    def download(self, name: str, version: str, path: Path) -> None:
        """Write the archive of ``name:version`` to ``path``."""
        with _storage_errors():
            self._client.fget_object(self.bucket, archive_key(name, version), str(path))


def build_model_bucket(settings: Settings) -> ModelBucket | None:
    """The configured bucket of model archives, or None (each host's own store only)."""
    s3 = settings.s3
    if not s3.models_bucket:
        return None
    if not s3.endpoint:
        raise ValueError("VQ_S3_MODELS_BUCKET needs VQ_S3_ENDPOINT (the S3 server holding it)")
    return ModelBucket(
        s3.endpoint,
        s3.access_key.get_secret_value(),
        s3.secret_key.get_secret_value(),
        s3.models_bucket,
        region=s3.region,
    )
