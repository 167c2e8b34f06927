"""The key that signs local image links: the operator's, or one made for this data dir.

No built-in key is ever used: anyone who knew it could mint a link to any image whose key
they know. With ``VQ_SIGNING_KEY`` unset (or left at the old placeholder), the first
process to start writes 32 random bytes to ``VQ_DATA_DIR/signing-key`` (mode 0600) and
every process on that data dir (the front, ``make run``'s workers) signs with it. Production
(``VQ_ENV=production``) must set the key itself, as its processes may not share a data dir,
and with API keys on a placeholder key is refused (``Settings.check_secrets``).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from visionqueue.core.settings import Settings

logger = logging.getLogger(__name__)

KEY_FILE = "signing-key"
# what older releases used when VQ_SIGNING_KEY was unset; never signs anything now
OLD_BUILT_IN_KEY = "dev-insecure-signing-key"


def key_file_path(settings: Settings) -> Path:
    """Return where the generated key of ``settings``' data dir lives."""
    return (settings.data_dir / KEY_FILE).resolve()


def signing_key(settings: Settings) -> bytes:
    """Return the configured key, else this data dir's generated key (made on first use)."""
    configured = settings.server.signing_key.get_secret_value()
    if configured and configured != OLD_BUILT_IN_KEY:
        return configured.encode()
    return _data_dir_key(key_file_path(settings))


def _data_dir_key(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(fresh, path)  # atomic: of two processes starting at once, one key wins
        logger.info("VQ_SIGNING_KEY is unset: generated a random image-link key in %s", path)
    except FileExistsError:
        pass
    finally:
        fresh.unlink()
    return path.read_bytes().strip()
