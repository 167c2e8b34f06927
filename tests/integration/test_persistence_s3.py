"""S3ImageStore against a real S3-protocol server (moto) on loopback."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from persistence.images import S3ImageStore, key_for
from tests.integration.persistence_factories import MotoS3, moto_s3_server, s3_image_store
from tests.support.rows import add_job, migrated_sqlite
from visionqueue.core.errors import ImageNotFound, StorageUnavailable

pytestmark = pytest.mark.integration

DATA = b"\xff\xd8\xff fake jpeg " + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3_server() as server:
        yield server


@pytest.fixture
def store(s3: MotoS3, request: pytest.FixtureRequest) -> S3ImageStore:
    store = s3_image_store(
        s3, bucket=f"vq-{hashlib.sha1(request.node.name.encode()).hexdigest()[:12]}"
    )
    store.ensure_bucket()
    return store


def test_bucket_is_created_once(s3: MotoS3) -> None:
    store = s3_image_store(s3, bucket="vq-created-here")
    with pytest.raises(StorageUnavailable):
        store.check()
    store.ensure_bucket()
    store.ensure_bucket()
    store.check()


def test_put_twice_stores_once_and_get_returns_bytes(store: S3ImageStore) -> None:
    key = store.put(DATA, "image/jpeg")
    assert key == key_for(DATA)
    client = store._client
    first = client.stat_object(store.bucket, key)
    assert first.content_type == "image/jpeg"
    time.sleep(1.1)  # S3 times have one-second resolution
    assert store.put(DATA, "image/jpeg") == key
    # one object; the second upload refreshed its write time (the retention purge's guard)
    assert store.last_modified(key) > first.last_modified  # type: ignore[operator]
    assert [obj.object_name for obj in client.list_objects(store.bucket, recursive=True)] == [key]
    assert store.get(key) == DATA


def test_keys_are_listed_in_order_and_orphans_purged(
    store: S3ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import retention
    from persistence.db import session_scope

    keys = sorted(store.put(DATA + bytes([i]), "image/jpeg") for i in range(5))
    assert [key for key, _ in store.list_keys("", 100)] == keys
    assert [key for key, _ in store.list_keys(keys[1], 2)] == keys[2:4]
    assert store.last_modified(key_for(b"never stored")) is None

    with migrated_sqlite(tmp_path) as engine:
        with session_scope(engine) as session:
            add_job(session, image_key=keys[0], image_sha256=keys[0].rsplit("/", 1)[1])
        assert retention.purge_orphans(engine, store) == 0  # all written just now: in flight
        monkeypatch.setattr(retention, "IN_FLIGHT_GRACE", timedelta(seconds=-60))
        assert retention.purge_orphans(engine, store) == 4
    assert [key for key, _ in store.list_keys("", 100)] == keys[:1]  # the referenced one


def test_missing_key_is_not_found(store: S3ImageStore) -> None:
    with pytest.raises(ImageNotFound):
        store.get(key_for(b"never stored"))
    store.delete(key_for(b"never stored"))


def test_delete_removes_the_object(store: S3ImageStore) -> None:
    key = store.put(DATA, "image/jpeg")
    store.delete(key)
    with pytest.raises(ImageNotFound):
        store.get(key)


def test_presigned_url_downloads_the_image(store: S3ImageStore, s3: MotoS3) -> None:
    key = store.put(DATA, "image/jpeg")
    url = store.url(key, 120)
    assert url.startswith(f"{s3.endpoint}/{store.bucket}/{key}?")
    assert "X-Amz-Signature=" in url
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.content == DATA


def test_public_endpoint_is_used_in_urls(s3: MotoS3) -> None:
    store = s3_image_store(s3, bucket="vq-public", public_endpoint="https://images.example.com")
    store.ensure_bucket()
    key = store.put(DATA, "image/jpeg")
    url = store.url(key, 60)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "images.example.com")
    assert "127.0.0.1" not in url
    # Same signed path and query, sent to the internal server: it serves the same bytes.
    internal = f"{s3.endpoint}{parts.path}?{parts.query}"
    assert httpx.get(internal, timeout=5).content == DATA


def test_stopped_server_is_storage_unavailable() -> None:
    with moto_s3_server() as s3:
        store = s3_image_store(s3, bucket="vq-stopped")
        store.ensure_bucket()
        key = store.put(DATA, "image/jpeg")
    dead = s3_image_store(s3, bucket="vq-stopped")
    started = time.monotonic()
    for call in (
        lambda: dead.get(key),
        lambda: dead.put(b"new", "image/png"),
        dead.check,
        dead.ensure_bucket,
        lambda: dead.delete(key),
    ):
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert "127.0.0.1" not in caught.value.message
    assert time.monotonic() - started < 15
    assert dead.url(key, 60).startswith(s3.endpoint)  # signing needs no server
