"""deliver_once against a real receiver on loopback: signed bodies, outcomes, pinning, TLS."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobs.webhooks.delivery import MAX_RESPONSE_BYTES, build_event, deliver_once
from jobs.webhooks.signing import generate_secret, signed_headers
from tests.integration.webhook_receiver import WebhookReceiver, make_tls_files
from tests.support.prerequisites import require_module

pytestmark = pytest.mark.integration

LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def secret() -> str:
    return generate_secret()


@pytest.fixture
def receiver(secret: str) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret) as running:
        yield running


def signed_event(secret: str, event_id: str = "evt_1") -> tuple[bytes, dict[str, str]]:
    body = build_event("job.completed", event_id, {"job_id": "j-1", "top1": "tabby"}, _now())
    return body, signed_headers([secret], event_id, int(time.time()), body)


def loopback_resolver(calls: list[str]) -> Any:
    """Resolve every name to 127.0.0.1, counting lookups; never touches real DNS."""

    def resolve(host: str, port: int, family: int = 0, type: int = 0) -> list[tuple[Any, ...]]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    return resolve


def _now() -> datetime:
    return datetime.now(UTC)


def test_2xx_delivers_a_body_the_receiver_verifies(receiver: WebhookReceiver, secret: str) -> None:
    body, headers = signed_event(secret)
    result = deliver_once(receiver.url(), body, headers, 5.0, LOOPBACK)
    assert (result.succeeded, result.status_code, result.error) == (True, 200, None)
    assert result.latency_s > 0
    [request] = receiver.requests
    assert request.verified, request.verify_error
    assert (request.method, request.path, request.body) == ("POST", "/hooks", body)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "VisionQueue-Webhooks/1"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["content-length"] == str(len(body))


def test_500_fails_and_may_be_retried(receiver: WebhookReceiver, secret: str) -> None:
    receiver.respond(500, body=b"database down")
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, LOOPBACK)
    assert (result.succeeded, result.permanent) == (False, False)
    assert (result.status_code, result.error) == (500, "http_500")
    assert result.response_excerpt == "database down"


def test_410_gone_stops_deliveries(receiver: WebhookReceiver, secret: str) -> None:
    receiver.respond(410)
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, LOOPBACK)
    assert (result.succeeded, result.permanent, result.error) == (False, True, "http_410")


def test_redirects_are_not_followed(receiver: WebhookReceiver, secret: str) -> None:
    receiver.respond(302, headers={"Location": receiver.url(path="/elsewhere")})
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, LOOPBACK)
    assert (result.status_code, result.error) == (302, "redirect_not_followed")
    assert (result.succeeded, result.permanent) == (False, False)
    receiver.settle()  # a followed redirect would have been recorded before deliver_once returned
    assert [r.path for r in receiver.requests] == ["/hooks"]


def test_slow_receiver_times_out(receiver: WebhookReceiver, secret: str) -> None:
    receiver.respond(200, delay_s=5.0)
    result = deliver_once(receiver.url(), *signed_event(secret), 0.5, LOOPBACK)
    assert (result.error, result.status_code, result.succeeded) == ("timeout", None, False)
    assert result.permanent is False
    # cut at the 0.5 s timeout: it did not wait for the receiver's answer after 5 s
    assert 0.4 <= result.latency_s < 5.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_are_reported(
    receiver: WebhookReceiver, secret: str, status: int
) -> None:
    receiver.respond(status, headers={"Retry-After": "7"})
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, LOOPBACK)
    assert (result.status_code, result.retry_after_s) == (status, 7)
    assert result.error == f"http_{status}"


def test_retry_after_http_date_is_reported(receiver: WebhookReceiver, secret: str) -> None:
    from email.utils import format_datetime

    when = format_datetime(datetime.fromtimestamp(time.time() + 120, UTC), usegmt=True)
    receiver.respond(503, headers={"Retry-After": when})
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, LOOPBACK)
    assert result.retry_after_s is not None and 100 <= result.retry_after_s <= 121


def test_loopback_is_refused_without_the_allow_list_and_never_contacted(
    receiver: WebhookReceiver, secret: str
) -> None:
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, [])
    assert (result.error, result.permanent, result.status_code) == ("forbidden_address", True, None)
    calls: list[str] = []
    by_name = deliver_once(
        receiver.url(host="hooks.test"), *signed_event(secret), 5.0, [], loopback_resolver(calls)
    )
    assert by_name.error == "forbidden_address"
    assert calls == ["hooks.test"]
    receiver.settle()
    assert receiver.connections == 0
    assert receiver.requests == []


def test_connection_goes_to_the_validated_address_under_the_original_name(
    receiver: WebhookReceiver, secret: str
) -> None:
    calls: list[str] = []
    url = receiver.url(host="hooks.test")
    result = deliver_once(url, *signed_event(secret), 5.0, ["hooks.test"], loopback_resolver(calls))
    assert result.succeeded, result
    assert calls == ["hooks.test"]  # resolved once; the connection reused that answer
    [request] = receiver.requests
    assert request.headers["host"] == f"hooks.test:{receiver.port}"
    assert request.verified


def test_caller_cannot_override_framing_headers(receiver: WebhookReceiver, secret: str) -> None:
    body, headers = signed_event(secret)
    headers |= {"Host": "evil.example", "Content-Length": "1"}
    assert deliver_once(receiver.url(), body, headers, 5.0, LOOPBACK).succeeded
    [request] = receiver.requests
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.body == body


def test_large_response_bodies_are_read_only_up_to_the_limit(
    receiver: WebhookReceiver, secret: str
) -> None:
    receiver.respond(200, body=b"x" * 2_000_000)
    result = deliver_once(receiver.url(), *signed_event(secret), 5.0, LOOPBACK)
    assert result.succeeded
    assert len(result.response_excerpt) == MAX_RESPONSE_BYTES


def test_closed_port_is_a_connect_error(secret: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks"
    result = deliver_once(url, *signed_event(secret), 2.0, LOOPBACK)
    assert (result.error, result.permanent) == ("connect_error", False)


def test_https_uses_the_original_name_for_sni_and_certificate(tmp_path: Path, secret: str) -> None:
    require_module("cryptography", "installed with the dev dependencies (moto needs it)")
    tls = make_tls_files(tmp_path, "hooks.test")
    client_context = ssl.create_default_context(cafile=str(tls.ca_file))
    with WebhookReceiver(secret, tls=tls) as receiver:
        calls: list[str] = []
        url = receiver.url(host="hooks.test")
        result = deliver_once(
            url,
            *signed_event(secret),
            5.0,
            ["hooks.test"],
            loopback_resolver(calls),
            ssl_context=client_context,
        )
        assert result.succeeded, result
        [request] = receiver.requests
        assert request.sni == "hooks.test"
        assert request.headers["host"] == f"hooks.test:{receiver.port}"
        assert request.verified

        # The certificate is checked against the URL's name, not the pinned IP.
        wrong = deliver_once(
            receiver.url(host="other.test"),
            *signed_event(secret),
            5.0,
            ["other.test"],
            loopback_resolver(calls),
            ssl_context=client_context,
        )
        assert (wrong.error, wrong.succeeded, wrong.permanent) == ("tls_error", False, False)
