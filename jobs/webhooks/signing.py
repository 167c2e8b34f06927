"""Sign webhook requests the Standard Webhooks way (https://www.standardwebhooks.com/).

The signed content is ``f"{msg_id}.{timestamp}."`` followed by the exact body bytes; each
configured secret yields one ``v1,<base64 HMAC-SHA256>`` entry so receivers can rotate keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
from collections.abc import Sequence

from pydantic import SecretStr

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
USER_AGENT = "VisionQueue-Webhooks/1"

SecretLike = str | SecretStr


def decode_secret(secret: SecretLike) -> bytes:
    """Return the HMAC key of a ``whsec_<base64>`` secret, or raise ``ValueError``."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    # The message never echoes the secret: it may end up in logs.
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"webhook secret must be {SECRET_PREFIX!r} followed by standard base64"
        ) from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"webhook secret must decode to at least {MIN_SECRET_BYTES} bytes")
    return key


def generate_secret(num_bytes: int = 32) -> str:
    """Return a fresh random ``whsec_<base64>`` secret."""
    if num_bytes < MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret needs at least {MIN_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(num_bytes)).decode("ascii")


def sign(secrets: Sequence[SecretLike], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value: one ``v1,<sig>`` per secret."""
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    if not (msg_id.isascii() and msg_id.isprintable()) or not msg_id or " " in msg_id:
        # The id travels in a header: no spaces, control characters or non-ASCII.
        raise ValueError("webhook message id must be non-empty printable ASCII without spaces")
    content = f"{msg_id}.{int(timestamp)}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(decode_secret(secret), content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode("ascii"))
    return " ".join(signatures)


def signed_headers(
    secrets: Sequence[SecretLike], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return every header of a signed webhook request for these exact body bytes."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
