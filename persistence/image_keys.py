"""Content-addressed object keys of stored images: ``images/<sha256[:2]>/<sha256>``."""

from __future__ import annotations

import hashlib
import re

from visionqueue.core.errors import ImageNotFound

# The only keys any store accepts: nothing else can name a path or an object.
_KEY_PATTERN = re.compile(r"images/(?P<prefix>[0-9a-f]{2})/(?P=prefix)[0-9a-f]{62}")


def sha256_hex(data: bytes) -> str:
    """Return the SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def key_for_digest(sha256: str) -> str:
    """Return the key of the image whose SHA-256 hex digest is ``sha256``."""
    return check_key(f"images/{sha256[:2]}/{sha256}")


def digest_of(key: str) -> str:
    """Return the SHA-256 hex digest an image key was made from."""
    return check_key(key).rsplit("/", 1)[1]


def key_for(data: bytes) -> str:
    """Return the key the image ``data`` is stored under."""
    return key_for_digest(sha256_hex(data))


def is_valid_key(key: str) -> bool:
    """Tell whether ``key`` has exactly the shape of an image key."""
    return isinstance(key, str) and _KEY_PATTERN.fullmatch(key) is not None


def check_key(key: str) -> str:
    """Return ``key`` unchanged, or raise ``ImageNotFound`` when it is not an image key."""
    if not is_valid_key(key):
        raise ImageNotFound("image not found")
    return key
