"""Store images in an S3-compatible bucket (MinIO, AWS) through the minio SDK."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from persistence.image_keys import check_key, is_valid_key, key_for
from visionqueue.core.errors import ImageNotFound, StorageUnavailable

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})
_BUCKET_TAKEN_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
# S3 refuses presigned URLs valid for longer than a week.
MAX_URL_TTL_S = 7 * 24 * 3600


def split_endpoint(endpoint: str) -> tuple[str, bool]:
    """Split ``http(s)://host[:port]`` into minio's (host[:port], secure)."""
    parts = urlsplit(endpoint)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username
        or parts.path not in ("", "/")
        or parts.query
    ):
        raise ValueError("an S3 endpoint must look like http(s)://host[:port]")
    return parts.netloc, parts.scheme == "https"


def create_bucket_if_missing(client: Minio, bucket: str) -> None:
    """Create ``bucket`` unless it exists (a concurrent creator is fine)."""
    with _storage_errors():
        if client.bucket_exists(bucket):
            return
        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in _BUCKET_TAKEN_CODES:
                raise


def _http_client(timeout_s: float, retries: int) -> urllib3.PoolManager:
    # minio's default waits 5 minutes per request and retries 5 times: far too long
    # for a request handler, and a dead server must surface as 503 quickly.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        maxsize=32,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        # read=0: a server that accepted the request but hangs is not retried, or one
        # upload would wait (retries + 1) x timeout_s (30 s) before its 503.
        retries=urllib3.Retry(
            total=retries, read=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )


@contextmanager
def _storage_errors() -> Iterator[None]:
    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING_CODES:
            raise ImageNotFound("image not found") from exc
        raise StorageUnavailable("object storage refused the request") from exc
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise StorageUnavailable("object storage is unavailable") from exc


class S3ImageStore:
    """Image store in one S3 bucket; URLs are presigned GETs."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        public_endpoint: str = "",
        timeout_s: float = 10.0,
        retries: int = 2,
    ) -> None:
        if not region:
            # Without a region minio asks the server for it, even just to sign a URL.
            raise ValueError("an S3 region is required")
        host, secure = split_endpoint(endpoint)
        http = _http_client(timeout_s, retries)
        self.bucket = bucket
        self._client = Minio(
            host, access_key, secret_key, secure=secure, region=region, http_client=http
        )
        # Presigned URLs embed the host they were signed for: sign for the public name.
        public_host, public_secure = split_endpoint(public_endpoint or endpoint)
        self._signer = Minio(
            public_host,
            access_key,
            secret_key,
            secure=public_secure,
            region=region,
            http_client=http,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (a concurrent creator is fine)."""
        create_bucket_if_missing(self._client, self.bucket)

    def put(self, data: bytes, content_type: str) -> str:
        """Store ``data`` under its content key and return the key.

        Always one PUT, no existence check first: the same bytes under the same key are
        idempotent, and a unique upload (the usual case) costs one request instead of two.
        It also drops a race: a check that found an identical older image, followed by a
        retention purge deleting it, used to leave the new job without its object.
        """
        key = key_for(data)
        with _storage_errors():
            self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )
        return key

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        check_key(key)
        with _storage_errors():
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def url(self, key: str, ttl_s: int) -> str:
        """Return a presigned GET URL on the public endpoint, valid ``ttl_s`` seconds."""
        check_key(key)
        expires = timedelta(seconds=max(1, min(ttl_s, MAX_URL_TTL_S)))
        with _storage_errors():
            return self._signer.presigned_get_object(self.bucket, key, expires=expires)

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""
        check_key(key)
        with _storage_errors():
            self._client.remove_object(self.bucket, key)

    def last_modified(self, key: str) -> datetime | None:
        """When the object was last written; None if it is missing."""
        check_key(key)
        with _storage_errors():
            try:
                stat = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    return None
                raise
        return stat.last_modified

    def list_keys(self, start_after: str, limit: int) -> list[tuple[str, datetime]]:
        """Up to ``limit`` image keys after ``start_after`` (key order), with write times."""
        found: list[tuple[str, datetime]] = []
        with _storage_errors():
            for obj in self._client.list_objects(
                self.bucket, prefix="images/", recursive=True, start_after=start_after
            ):
                if obj.object_name and obj.last_modified and is_valid_key(obj.object_name):
                    found.append((obj.object_name, obj.last_modified))
                if len(found) >= limit:
                    break
        return found

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the bucket answers."""
        with _storage_errors():
            exists = self._client.bucket_exists(self.bucket)
        if not exists:
            raise StorageUnavailable("the image bucket does not exist")
