"""An in-process moto S3 server and image stores on it, for persistence tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from persistence.images import S3ImageStore


class MotoS3(NamedTuple):
    endpoint: str
    access_key: str
    secret_key: str


@contextmanager
def moto_s3_server() -> Iterator[MotoS3]:
    """Run an in-memory S3 server on a free loopback port; yield (endpoint, keys)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoS3(f"http://{host}:{port}", "vq-test-access", "vq-test-secret")
    finally:
        server.stop()
        # stop() leaves the socket listening: close it so later clients are refused at once.
        listener: Any = getattr(server, "_server", None)
        if listener is not None:
            listener.server_close()


def s3_image_store(s3: MotoS3, bucket: str = "vq-test-images", **kwargs: Any) -> S3ImageStore:
    """Build an ``S3ImageStore`` on ``s3`` with short timeouts (no bucket created yet)."""
    kwargs.setdefault("timeout_s", 2.0)
    kwargs.setdefault("retries", 1)
    return S3ImageStore(s3.endpoint, s3.access_key, s3.secret_key, bucket, **kwargs)
