"""The crop sockets of the classifier the front started on this host, called from a worker.

On the embedded default the classifier runs inside the Bento server, and only the front
reaches its HTTP routes; each classifier worker also listens on a crop socket of its own
(``visionqueue.dataplane.crop_socket``). A worker on the same host, as the same user, sends a
chunk's crops there itself, in their class of work, instead of posting them to the front's
``POST /v1/batches/crops``: the front's event loop, which runs at the server's CPU priority in
a scheduling group of its own, then no longer reads 9.6 MB bodies and writes 64 answers beside
a person's request (docs/priority.md). The front says where the sockets are and describes the
model's versions (``GET /v1/batches/crops/classifier``); ``jobs.classify_crops`` posts to the
front as before when the worker cannot open them (another host or container, another user).

Blocking, one call at a time per connection: each worker thread keeps a connection of its own.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jobs.classifier_client import is_transient
from visionqueue.core.errors import Unavailable, Unprocessable
from visionqueue.dataplane.priority import Priority
from visionqueue.dataplane.socket_frames import (
    ANSWER,
    OK,
    FrameError,
    parse_answer,
    request_header,
)

CALL_TIMEOUT_S = 120.0  # as long as the workers' HTTP client waits for the front
CONNECT_TIMEOUT_S = 5.0

# the front's answer for a model (None: the default): sockets, api and described
AskFront = Callable[[str | None], dict[str, Any]]


class CropSocketsGone(Unavailable):
    """No socket the front named accepts a connection, even after asking the front again
    (the server restarted elsewhere, or switched to HTTP): post to the front instead."""


def open_socket(path: Path, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """Connect to the crop socket at ``path`` (``OSError`` when nothing listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def reachable(paths: list[Path]) -> bool:
    """Whether this process can open one of ``paths`` (same host, same user, listening)."""
    for path in paths:
        try:
            open_socket(path).close()
        except OSError:
            continue
        return True
    return False


class SocketWire:
    """Classify over the crop sockets; describe the model through the front (a ``Wire``)."""

    via = "crop_socket"

    def __init__(self, ask_front: AskFront, paths: list[Path]) -> None:
        self._ask_front = ask_front
        self._paths = paths
        self._local = threading.local()  # this thread's connection and its last call id
        self._turn = itertools.count()  # each new connection starts at the next socket

    def describe(self, name: str) -> dict[str, Any]:
        view = self._ask_front(name)
        self._paths = [Path(p) for p in view["sockets"]]  # a restarted server moved them
        return dict(view["described"])

    def call(self, api: str, crops: np.ndarray, priority: Priority) -> np.ndarray:
        for attempt in (1, 2):
            sock = self._connection()
            try:
                return self._exchange(sock, api, crops, priority)
            except (BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if attempt == 2:  # not a connection the classifier closed when it restarted
                    raise _lost(exc) from exc
            except (OSError, FrameError) as exc:  # a timeout, a broken frame: start afresh
                self._drop()
                raise _lost(exc) from exc
        raise AssertionError("unreachable")

    def _connection(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._open(self._paths)
            if sock is None:  # the server restarted (new sockets) or calls over HTTP now
                self._paths = [Path(p) for p in self._ask_front(None)["sockets"]]
                sock = self._open(self._paths)
            if sock is None:
                raise CropSocketsGone(
                    "no crop socket of the classifier accepts a connection",
                    code="classifier_unavailable",
                )
            sock.settimeout(CALL_TIMEOUT_S)
            self._local.sock, self._local.call_id = sock, 0
        return sock

    def _open(self, paths: list[Path]) -> socket.socket | None:
        if not paths:
            return None
        start = next(self._turn) % len(paths)
        for path in paths[start:] + paths[:start]:
            try:
                return open_socket(path)
            except OSError:
                continue
        return None

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def _exchange(
        self, sock: socket.socket, api: str, crops: np.ndarray, priority: Priority
    ) -> np.ndarray:
        self._local.call_id = call_id = (self._local.call_id + 1) % 2**32
        crops = np.ascontiguousarray(crops)
        sock.sendall(request_header(call_id, api, crops, int(priority)))
        sock.sendall(crops.data.cast("B"))
        answered, status, shape, body_len = parse_answer(_receive(sock, ANSWER.size))
        body = _receive(sock, body_len)
        if answered != call_id:
            raise FrameError(f"answer to call {answered}, not {call_id}")
        if status == OK:
            return np.frombuffer(body, np.float32).reshape(shape)
        message = f"the classifier answered {status}: {body.decode(errors='replace')}"
        if is_transient(status):
            raise Unavailable(message, code="classifier_unavailable")
        raise Unprocessable(message, code=f"classifier_http_{status}")


def _receive(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionResetError("the classifier closed the connection")
        got += n
    return bytes(buffer)


def _lost(exc: OSError | FrameError) -> Unavailable:
    return Unavailable(
        f"the call to the classifier's crop socket failed ({type(exc).__name__})",
        code="classifier_unavailable",
    )
