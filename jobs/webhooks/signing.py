"""Sign webhook requests the Standard Webhooks way (https://www.standardwebhooks.com/).

The signed content is ``f"{msg_id}.{timestamp}."`` followed by the exact body bytes; each
configured secret yields one ``v1,<base64 HMAC-SHA256>`` entry so receivers can rotate keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from visionqueue.core.secrets import (
    MIN_SECRET_BYTES,
    SECRET_PREFIX,
    SecretLike,
    decode_secret,
    generate_secret,
)

__all__ = [
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "USER_AGENT",
    "SecretLike",
    "decode_secret",
    "generate_secret",
    "sign",
    "signed_headers",
]

USER_AGENT = "VisionQueue-Webhooks/1"


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
