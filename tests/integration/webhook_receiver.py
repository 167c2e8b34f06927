"""A scriptable webhook receiver on loopback that records and verifies every request.

Script answers with ``respond(status, headers, delay_s, body)``; unscripted requests get 200.
Each request is checked with the Standard Webhooks reference library (``standardwebhooks``).
"""

from __future__ import annotations

import collections
import datetime as dt
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import standardwebhooks

# Requests to this path are the tests' own markers (``settle``): not recorded, not scripted.
MARKER_PATH = "/.vq-marker"


@dataclass(frozen=True)
class ScriptedResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes = b""


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    verified: bool
    verify_error: str | None
    sni: str | None


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: WebhookReceiver

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.receiver._count_connection()
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        receiver = self.server.receiver
        if self.path == MARKER_PATH:
            self.send_response(204)
            self.send_header("Connection", "close")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        sni = getattr(self.connection, "_vq_sni", None)
        receiver._record(self.command, self.path, dict(self.headers.items()), body, sni)
        answer = receiver._next_response()
        # Waking on stop() keeps shutdown fast when a test scripted a long delay.
        if answer.delay_s and receiver._stopping.wait(answer.delay_s):
            return
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test): nothing left to say

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebhookReceiver:
    """An HTTP(S) server on 127.0.0.1, port 0, serving in a background thread."""

    def __init__(self, secret: str | None = None, *, tls: TlsFiles | None = None) -> None:
        self._secret = secret
        self._tls = tls
        self._lock = threading.Lock()
        self._script: collections.deque[ScriptedResponse] = collections.deque()
        self._requests: list[ReceivedRequest] = []
        self._connections = 0
        self._markers = 0
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        if self._tls is not None:
            server.socket = _server_tls_context(self._tls).wrap_socket(
                server.socket, server_side=True
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    def url(self, host: str = "127.0.0.1", path: str = "/hooks") -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def respond(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay_s: float = 0.0,
        body: bytes = b"",
    ) -> None:
        """Queue the answer to the next request."""
        with self._lock:
            self._script.append(ScriptedResponse(status, dict(headers or {}), delay_s, body))

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """Connections accepted so far, the markers of ``settle`` left out."""
        with self._lock:
            return self._connections - self._markers

    def settle(self, timeout_s: float = 10.0) -> None:
        """Return once every connection opened to the receiver before this call is accepted.

        One thread accepts connections in arrival order, so once a marker connection opened
        now has been answered, no earlier one is still waiting in the listen queue. The test
        can then assert that nothing (more) arrived without sleeping and hoping.
        """
        with self._lock:
            self._markers += 1
        # verify=False: a TLS receiver's certificate names a test host, not 127.0.0.1
        with httpx.Client(verify=False, timeout=timeout_s) as client:
            client.get(self.url(path=MARKER_PATH))

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[ReceivedRequest]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self._requests) >= count, timeout=timeout_s)
            return list(self._requests)

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def _next_response(self) -> ScriptedResponse:
        with self._lock:
            return self._script.popleft() if self._script else ScriptedResponse()

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: bytes, sni: str | None
    ) -> None:
        lowered = {name.lower(): value for name, value in headers.items()}
        verified, error = True, None
        if self._secret is None:
            verified, error = False, "no secret configured"
        else:
            try:
                standardwebhooks.Webhook(self._secret).verify(body, lowered)
            except Exception as exc:  # the library raises several types; record which
                verified, error = False, type(exc).__name__
        request = ReceivedRequest(method, path, lowered, body, verified, error, sni)
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()


def _server_tls_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)

    def remember_sni(sock: ssl.SSLObject, name: str, _ctx: ssl.SSLContext) -> None:
        # Server-side sockets wrapped by the listening SSLSocket are SSLSockets here.
        sock._vq_sni = name  # type: ignore[attr-defined]

    context.sni_callback = remember_sni
    return context


def make_tls_files(directory: Path, hostname: str) -> TlsFiles:
    """Write a throwaway CA and a server certificate for ``hostname`` into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "VisionQueue test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files
