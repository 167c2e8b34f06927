"""An httpcore network backend that connects only to addresses the SSRF guard approved.

The pool still works with the URL's hostname, so the Host header, TLS SNI and certificate
verification all use the original name; only the TCP connection goes to the pinned IPs.
This closes the DNS-rebinding window: nothing resolves the name a second time.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
from httpcore import NetworkBackend, NetworkStream, SyncBackend


class PinnedBackend(NetworkBackend):
    """Open TCP connections to pre-validated IPs of one host, under one overall deadline."""

    def __init__(self, host: str, addresses: Sequence[str], deadline: float) -> None:
        self._host = host.lower()
        self._addresses = list(addresses)
        self._deadline = deadline
        self._backend = SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream:
        if host.strip("[]").lower() != self._host:
            raise httpcore.ConnectError("refusing a connection to an unvalidated host")
        last_error: httpcore.ConnectError | None = None
        for address in self._addresses:
            budget = _budget(self._deadline, timeout, httpcore.ConnectTimeout)
            try:
                stream = self._backend.connect_tcp(
                    address, port, timeout=budget, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc  # try the next validated address, like a browser would
                continue
            return DeadlineStream(stream, self._deadline)
        raise last_error or httpcore.ConnectError("no validated address to connect to")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> NetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered over unix sockets")


class DeadlineStream(NetworkStream):
    """Bound every read, write and TLS handshake by one deadline, so a slow drip ends too."""

    def __init__(self, stream: NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _budget(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _budget(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> NetworkStream:
        budget = _budget(self._deadline, timeout, httpcore.ConnectTimeout)
        tls = self._stream.start_tls(ssl_context, server_hostname=server_hostname, timeout=budget)
        return DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _budget(
    deadline: float, timeout: float | None, expired: type[httpcore.TimeoutException]
) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("webhook delivery deadline passed")
    return left if timeout is None else min(timeout, left)
