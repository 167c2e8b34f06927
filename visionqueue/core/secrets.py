"""Webhook secrets: the ``whsec_<base64>`` format, shared by settings checks and the signer."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets

from pydantic import SecretStr

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24

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


_TENANT_CONTEXT = b"visionqueue tenant webhook secret v1\x00"


def tenant_secret(master: SecretLike, owner: str) -> str:
    """Return the ``whsec_`` secret of one API key's owner, derived from ``master``.

    HMAC-SHA256(master key, context || owner id): each tenant's secret verifies its own
    events only, and knowing one tells nothing about another's or about the master.
    """
    if not owner:
        raise ValueError("a tenant secret needs an owner (API keys are off)")
    digest = hmac.new(decode_secret(master), _TENANT_CONTEXT + owner.encode(), hashlib.sha256)
    return SECRET_PREFIX + base64.b64encode(digest.digest()).decode("ascii")
