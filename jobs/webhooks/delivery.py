"""Make one webhook delivery attempt, plan the next one, and build the signed event body.

``deliver_once`` resolves and validates the target once, then connects to exactly the
validated addresses (``PinnedBackend``) while the request keeps the original hostname for
the Host header and, over https, for SNI and certificate verification. Redirects are never
followed; only a 2xx answer counts as delivered.
"""

from __future__ import annotations

import email.utils
import functools
import json
import random
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpcore
import httpx

from jobs.webhooks.pinned_network import PinnedBackend
from jobs.webhooks.ssrf import Resolver, check_url, resolve_and_validate
from visionqueue.core.errors import Unavailable, Unprocessable

EVENT_TYPES = frozenset(
    {"job.completed", "job.failed", "batch.completed", "batch.failed", "batch.cancelled"}
)
MAX_RESPONSE_BYTES = 4096
MAX_RETRY_AFTER_S = 86_400.0
JITTER = 0.2
# Framing headers are ours to set: a caller's value could desynchronise the request.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one delivery attempt, safe to store and show to the job's owner."""

    status_code: int | None
    error: str | None  # short stable code: timeout, connect_error, http_500, ...
    latency_s: float
    retry_after_s: float | None = None
    succeeded: bool = False
    permanent: bool = False  # stop retrying: 410 Gone or a forbidden address
    response_excerpt: str = ""  # first bytes of the receiver's answer, for delivery logs


class UniformSource(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


def deliver_once(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    allowed_hosts: Iterable[str],
    resolver: Resolver = socket.getaddrinfo,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> AttemptResult:
    """POST ``body`` to ``url`` once, pinned to the validated address; never raise."""
    started = time.monotonic()
    allowed = list(allowed_hosts)
    try:
        target = check_url(url, allowed)
        addresses = resolve_and_validate(target.host, target.port, allowed, resolver)
    except Unprocessable as exc:
        error = "forbidden_address" if exc.code == "forbidden_webhook_url" else "invalid_url"
        return AttemptResult(None, error, time.monotonic() - started, permanent=True)
    except Unavailable:
        return AttemptResult(None, "dns_error", time.monotonic() - started)

    request_headers = [("Host", target.host_header)] + [
        (name, value) for name, value in headers.items() if name.lower() not in _OWN_HEADERS
    ]
    request_url = httpcore.URL(
        scheme=target.scheme, host=target.host, port=target.port, target=target.target
    )
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    backend = PinnedBackend(target.host, addresses, deadline=started + timeout_s)
    try:
        with (
            httpcore.ConnectionPool(
                ssl_context=ssl_context or _default_ssl_context(),
                max_connections=1,
                network_backend=backend,
            ) as pool,
            pool.stream(
                "POST",
                request_url,
                headers=request_headers,
                content=body,
                extensions={"timeout": timeouts},
            ) as response,
        ):
            latency_s = time.monotonic() - started
            excerpt = _read_excerpt(response)
            return _classify(response.status, response.headers, latency_s, excerpt)
    except httpcore.TimeoutException:
        return AttemptResult(None, "timeout", time.monotonic() - started)
    except httpcore.ConnectError as exc:
        error = "tls_error" if _caused_by_tls(exc) else "connect_error"
        return AttemptResult(None, error, time.monotonic() - started)
    except httpcore.ProtocolError:
        return AttemptResult(None, "protocol_error", time.monotonic() - started)
    except httpcore.NetworkError:
        return AttemptResult(None, "network_error", time.monotonic() - started)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read a Retry-After header (delay-seconds or HTTP-date) as seconds, capped at a day."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value[:12]), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def next_delay(
    attempt: int,
    schedule: Sequence[float],
    retry_after: float | None = None,
    rng: UniformSource = random,
) -> float | None:
    """Return seconds to wait before attempt ``attempt + 1``, or None when out of attempts."""
    if attempt < 1:
        raise ValueError("attempt counts attempts already made and starts at 1")
    if attempt > len(schedule):
        return None
    delay = float(schedule[attempt - 1]) * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), MAX_RETRY_AFTER_S))
    return delay


def build_event(event_type: str, event_id: str, data: Mapping[str, Any], now: datetime) -> bytes:
    """Serialise an event once; these exact bytes are signed and sent."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    if now.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    payload = {
        "type": event_type,
        "id": event_id,
        "timestamp": now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": dict(data),
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def _classify(
    status: int, headers: Sequence[tuple[bytes, bytes]], latency_s: float, excerpt: str
) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult(status, None, latency_s, succeeded=True, response_excerpt=excerpt)
    retry_after = None
    if status in (429, 503):
        raw = next((v for k, v in headers if k.lower() == b"retry-after"), None)
        retry_after = parse_retry_after(raw.decode("latin-1") if raw is not None else None)
    error = "redirect_not_followed" if 300 <= status < 400 else f"http_{status}"
    return AttemptResult(
        status,
        error,
        latency_s,
        retry_after_s=retry_after,
        permanent=status == 410,
        response_excerpt=excerpt,
    )


def _read_excerpt(response: httpcore.Response) -> str:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_stream():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_RESPONSE_BYTES:
                break  # closing the response drops the rest with the connection
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError):
        pass  # the status line already decided the outcome
    return b"".join(chunks)[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace")


def _caused_by_tls(exc: BaseException) -> bool:
    # httpcore's pool re-raises its mapped error, so the SSLError may sit in either link.
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
