"""Standard Webhooks signatures that the reference library accepts, and only those."""

from __future__ import annotations

import base64
import json
import time

import pytest
import standardwebhooks
from pydantic import SecretStr

from jobs.webhooks.signing import (
    USER_AGENT,
    decode_secret,
    generate_secret,
    sign,
    signed_headers,
)

BODY = b'{"data":{"job_id":"j-1","label":"tabby"},"id":"evt_1","type":"job.completed"}'


def _headers(secrets: list[str], *, timestamp: int | None = None, body: bytes = BODY) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    return signed_headers(secrets, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", ts, body)


def test_reference_library_verifies_our_signature() -> None:
    secret = generate_secret()
    payload = standardwebhooks.Webhook(secret).verify(BODY, _headers([secret]))
    assert payload == json.loads(BODY)


def test_signature_matches_the_spec_test_vector() -> None:
    # Published alongside the Standard Webhooks / Svix reference implementations.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign([secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_carry_id_timestamp_and_content_type() -> None:
    headers = signed_headers([generate_secret()], "msg_1", 1_700_000_000, BODY)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT == "VisionQueue-Webhooks/1"


def test_tampered_body_is_rejected() -> None:
    secret = generate_secret()
    headers = _headers([secret])
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY.replace(b"tabby", b"tiger"), headers)


def test_wrong_secret_is_rejected() -> None:
    headers = _headers([generate_secret()])
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(BODY, headers)


@pytest.mark.parametrize("offset_s", [-600, 600])
def test_timestamp_ten_minutes_off_is_rejected(offset_s: int) -> None:
    secret = generate_secret()
    headers = _headers([secret], timestamp=int(time.time()) + offset_s)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(BODY, headers)


def test_two_secrets_give_two_signatures_each_verifiable() -> None:
    old, new = generate_secret(), generate_secret()
    headers = _headers([old, new])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(BODY, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(BODY, headers)


def test_settings_secret_strings_are_accepted() -> None:
    secret = generate_secret()
    assert sign([SecretStr(secret)], "m", 1, BODY) == sign([secret], "m", 1, BODY)


def test_generated_secrets_are_fresh_and_long_enough() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(decode_secret(first)) == 32


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_not base64!!",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),  # too short
    ],
)
def test_malformed_secrets_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as info:
        sign([secret], "msg_1", 1, BODY)
    if len(secret) > len("whsec_"):
        assert secret[len("whsec_") :] not in str(info.value)


def test_signing_needs_a_secret_and_a_header_safe_id() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sign([], "msg_1", 1, BODY)
    with pytest.raises(ValueError, match="message id"):
        sign([generate_secret()], "msg 1\r\nx: y", 1, BODY)
