"""Store images in a local directory and hand out HMAC-signed, expiring URLs to them."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from persistence.image_keys import check_key, is_valid_key, key_for
from visionqueue.core.errors import ImageNotFound, StorageUnavailable


def image_signature(key: str, expires: int, signing_key: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``"key:expires"``."""
    message = f"{key}:{expires}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def verify_image_signature(
    key: str,
    expires: int | str,
    sig: str,
    signing_key: bytes,
    now: float | None = None,
) -> bool:
    """Tell whether ``sig`` signs ``key`` until ``expires`` and that time is not past."""
    if not is_valid_key(key):
        return False
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if expires_at < current:
        return False
    expected = image_signature(key, expires_at, signing_key)
    return hmac.compare_digest(expected.encode(), str(sig).encode())


class LocalImageStore:
    """Image store on the local filesystem (the embedded default)."""

    def __init__(self, root: Path, public_url: str, signing_key: bytes) -> None:
        if not signing_key:
            raise ValueError("signing_key must not be empty")
        self.root = Path(root)
        self.public_url = public_url.rstrip("/")
        self._signing_key = signing_key

    def ensure_bucket(self) -> None:
        """Create the root directory if missing."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable("the image directory cannot be created") from exc

    def path(self, key: str) -> Path:
        """Return the file of ``key`` (validated: no other path can come out)."""
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, data: bytes, content_type: str) -> str:
        """Store ``data`` once under its content key and return the key."""
        key = key_for(data)
        target = self.path(key)
        if target.exists():
            try:  # a fresh write time tells the retention purge this image is in use again
                os.utime(target)
                return key
            except FileNotFoundError:
                pass  # purged just now: write it again below
            except OSError as exc:
                raise StorageUnavailable("the image directory is not writable") from exc
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                # Readers see either no file or the whole image, never a partial one.
                os.replace(tmp_name, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
                raise
        except OSError as exc:
            raise StorageUnavailable("the image directory is not writable") from exc
        return key

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageNotFound("image not found") from exc
        except OSError as exc:
            raise StorageUnavailable("the image directory is not readable") from exc

    def url(self, key: str, ttl_s: int) -> str:
        """Return a signed URL of the image served by the front, valid ``ttl_s`` seconds."""
        check_key(key)
        expires = int(time.time()) + ttl_s
        sig = image_signature(key, expires, self._signing_key)
        return f"{self.public_url}/v1/images/{key}?expires={expires}&sig={sig}"

    def link_is_valid(self, key: str, expires: int, sig: str) -> bool:
        """Say whether ``url`` signed this link (with this store's key) and it has not expired."""
        return verify_image_signature(key, expires, sig, self._signing_key)

    def delete(self, key: str) -> None:
        """Remove the image; a missing one is fine."""
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable("the image directory is not writable") from exc

    def last_modified(self, key: str) -> datetime | None:
        """When the image file was last written; None if it is missing."""
        try:
            return datetime.fromtimestamp(self.path(key).stat().st_mtime, UTC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageUnavailable("the image directory is not readable") from exc

    def list_keys(self, start_after: str, limit: int) -> list[tuple[str, datetime]]:
        """Up to ``limit`` image keys after ``start_after`` (key order), with write times."""
        found: list[tuple[str, datetime]] = []
        images = self.root / "images"
        try:
            shards = sorted(p.name for p in images.iterdir()) if images.is_dir() else []
            for shard in shards:
                if f"images/{shard}/~" <= start_after:  # the whole shard sorts before the start
                    continue
                for name in sorted(p.name for p in (images / shard).iterdir()):
                    key = f"images/{shard}/{name}"
                    if key <= start_after or not is_valid_key(key):  # e.g. a .tmp- part file
                        continue
                    try:
                        mtime = (images / shard / name).stat().st_mtime
                    except FileNotFoundError:
                        continue  # deleted while listing
                    found.append((key, datetime.fromtimestamp(mtime, UTC)))
                    if len(found) >= limit:
                        return found
        except OSError as exc:
            raise StorageUnavailable("the image directory is not readable") from exc
        return found

    def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the root is a writable directory."""
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise StorageUnavailable("the image directory is missing or not writable")
