"""Image keys, signed local URLs and the local image store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from persistence.images import (
    LocalImageStore,
    S3ImageStore,
    build_image_store,
    check_key,
    is_valid_key,
    key_for,
    verify_image_signature,
)
from visionqueue.core.errors import ImageNotFound, StorageUnavailable
from visionqueue.core.settings import Settings

KEY = b"signing-key"
DATA = b"\x89PNG fake image bytes"


def _store(tmp_path: Path) -> LocalImageStore:
    store = LocalImageStore(tmp_path / "images", "http://testserver:3000/", KEY)
    store.ensure_bucket()
    return store


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def test_key_is_content_addressed() -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    assert key_for(DATA) == f"images/{digest[:2]}/{digest}"
    assert is_valid_key(key_for(DATA))


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "images/../../etc/passwd",
        "/etc/passwd",
        "images/ab/" + "a" * 64,  # prefix does not match the digest
        "images/aa/" + "A" * 64,  # uppercase
        "images/aa/" + "a" * 63,
        "images/aa/" + "a" * 64 + "\n",
        "images/aa/" + "a" * 64 + "/..",
        "images\\aa\\" + "a" * 64,
        "",
    ],
)
def test_anything_but_an_exact_key_is_refused(tmp_path: Path, key: str) -> None:
    store = _store(tmp_path)
    assert not is_valid_key(key)
    with pytest.raises(ImageNotFound):
        check_key(key)
    with pytest.raises(ImageNotFound):
        store.get(key)
    with pytest.raises(ImageNotFound):
        store.url(key, 60)


def test_local_store_puts_once_and_reads_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = store.put(DATA, "image/png")
    inode = store.path(key).stat().st_ino
    os.utime(store.path(key), (1, 1))
    assert store.put(DATA, "image/png") == key
    again = store.path(key).stat()
    assert again.st_ino == inode  # not written again,
    assert again.st_mtime > 1  # but its write time is refreshed (the retention purge's guard)
    assert store.get(key) == DATA
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert files == [store.path(key)]  # no temporary file left behind
    store.delete(key)
    store.delete(key)
    with pytest.raises(ImageNotFound):
        store.get(key)


def test_local_store_check(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "missing", "http://x", KEY)
    with pytest.raises(StorageUnavailable):
        store.check()
    store.ensure_bucket()
    store.check()


def test_local_url_is_signed_and_verifies(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = store.put(DATA, "image/png")
    url = store.url(key, 60)
    assert url.startswith(f"http://testserver:3000/v1/images/{key}?")
    query = _query(url)
    assert verify_image_signature(key, query["expires"], query["sig"], KEY)
    assert verify_image_signature(key, int(query["expires"]), query["sig"], KEY)


def test_signature_tampering_and_expiry_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key = store.put(DATA, "image/png")
    other = store.put(b"another image", "image/png")
    query = _query(store.url(key, 60))
    expires, sig = int(query["expires"]), query["sig"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert not verify_image_signature(key, expires, flipped, KEY)
    assert not verify_image_signature(other, expires, sig, KEY)
    assert not verify_image_signature(key, expires + 1, sig, KEY)
    assert not verify_image_signature(key, expires, sig, b"another-key")
    assert not verify_image_signature(key, "soon", sig, KEY)
    assert not verify_image_signature("../" + key, expires, sig, KEY)
    assert verify_image_signature(key, expires, sig, KEY, now=expires)
    assert not verify_image_signature(key, expires, sig, KEY, now=expires + 1)


def test_factory_picks_local_without_s3_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VQ_S3_ENDPOINT", raising=False)
    settings = Settings(data_dir=tmp_path)
    store = build_image_store(settings)
    assert isinstance(store, LocalImageStore)
    assert store.root == tmp_path.resolve() / "images"
    assert not store.root.exists()  # building does no I/O


def test_factory_picks_s3_with_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("VQ_S3_PUBLIC_ENDPOINT", "https://images.example.com")
    monkeypatch.setenv("VQ_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("VQ_S3_SECRET_KEY", "secret-key")
    store = build_image_store(Settings(data_dir=tmp_path))
    assert isinstance(store, S3ImageStore)
    key = key_for(DATA)
    url = store.url(key, 60)  # signing is offline: no request to the dead endpoint
    assert url.startswith(f"https://images.example.com/visionqueue-images/{key}?")
    assert _query(url)["X-Amz-Expires"] == "60"
    assert "127.0.0.1" not in url


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:9000", "ftp://host", "http://host:9000/prefix", "http://u:p@host"]
)
def test_s3_store_refuses_malformed_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError):
        S3ImageStore(endpoint, "a", "b", "bucket")


def test_a_key_gives_back_its_digest() -> None:
    from persistence.image_keys import digest_of, sha256_hex

    assert digest_of(key_for(DATA)) == sha256_hex(DATA)
    with pytest.raises(ImageNotFound):
        digest_of("images/../etc/passwd")
