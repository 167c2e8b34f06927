"""Where uploaded images live: the ``ImageStore`` interface and the factory choosing a backend.

Both backends store an image once under its content key ``images/<sha256[:2]>/<sha256>``
(``persistence.image_keys``) and raise ``StorageUnavailable`` or ``ImageNotFound``, never a
third-party error. ``S3ImageStore`` is used when ``VQ_S3_ENDPOINT`` is set, otherwise
``LocalImageStore`` under ``VQ_DATA_DIR/images``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from persistence.image_keys import check_key, is_valid_key, key_for, sha256_hex
from persistence.local_images import LocalImageStore, image_signature, verify_image_signature
from persistence.s3_images import S3ImageStore
from visionqueue.core.errors import ImageNotFound, StorageUnavailable
from visionqueue.core.settings import Settings
from visionqueue.core.signing_key import signing_key

__all__ = [
    "ImageStore",
    "LocalImageStore",
    "S3ImageStore",
    "build_image_store",
    "check_key",
    "image_signature",
    "image_url_or_none",
    "is_valid_key",
    "key_for",
    "sha256_hex",
    "verify_image_signature",
]


class ImageStore(Protocol):
    def ensure_bucket(self) -> None:
        """Create the bucket (S3) or root directory (local) if missing."""
        ...

    def put(self, data: bytes, content_type: str) -> str:
        """Store ``data`` once under its content key and return the key."""
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; ``ImageNotFound`` if missing."""
        ...

    def url(self, key: str, ttl_s: int) -> str:
        """Return a URL a client can GET the image from for ``ttl_s`` seconds."""
        ...

    def delete(self, key: str) -> None:
        """Remove the image; a missing one is fine."""
        ...

    def last_modified(self, key: str) -> datetime | None:
        """When the image was last written (a ``put`` of the same bytes refreshes it)."""
        ...

    def list_keys(self, start_after: str, limit: int) -> list[tuple[str, datetime]]:
        """Up to ``limit`` stored keys after ``start_after`` in key order, with their times."""
        ...

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the store is usable (readiness)."""
        ...


def image_url_or_none(store: ImageStore, key: str, ttl_s: int) -> str | None:
    """Return a link to the image, or None when the store cannot make one now.

    Job views and webhook events show the link; an answer without it beats no answer.
    """
    try:
        return store.url(key, ttl_s)
    except (StorageUnavailable, ImageNotFound):
        return None


def build_image_store(settings: Settings) -> ImageStore:
    """Build the configured store (no I/O: call ``ensure_bucket`` at start-up)."""
    s3 = settings.s3
    if s3.endpoint:
        return S3ImageStore(
            s3.endpoint,
            s3.access_key.get_secret_value(),
            s3.secret_key.get_secret_value(),
            s3.bucket,
            region=s3.region,
            public_endpoint=s3.public_endpoint,
        )
    # the one exception to "no I/O": the data dir's generated key, read or made once
    return LocalImageStore(settings.images_dir, settings.public_url, signing_key(settings))
