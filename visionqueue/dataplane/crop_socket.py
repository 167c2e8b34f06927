"""The front's calls into the classifier's batch queues over one Unix socket per classifier worker.

BentoML's inter-service HTTP call costs a lone request ~3 ms beyond the forward pass (aiohttp,
pickle, the classifier's ASGI middleware, routing); this socket carries the same call as
one frame each way (``visionqueue.dataplane.socket_frames``) into the classifier worker's priority
queue (``visionqueue.dataplane.priority_queue``, which the HTTP ``prioritized_*`` routes join
too); the queue runs each of its batches through the batching dispatcher BentoML's route uses
(``ServiceAppFactory.batch_infer``, ``visionqueue.bento.internals``), so BentoML's batch
metrics still count them. Each classifier worker listens on a socket of its own next to BentoML's socket for
the classifier (``BENTOML_RUNNER_MAP``: unique per ``bentoml serve``, deleted when it
stops); each front worker keeps one connection per classifier worker, sends a call to the
one with the fewest calls outstanding, and reconnects after a classifier restart.

The sockets take no ``VQ_CLASSIFIER_TOKEN`` (which guards the HTTP routes): only the server's
own user reaches them, and it can read the token from the processes' environment anyway.

Failures reach the caller as ``CropSocketError``: a classifier that answers an error (with the
HTTP status its route would have given), one that is not listening, or a connection that
breaks (every call outstanding on it fails at once). Each call carries its class of work
and how long it may wait for its forward pass (``visionqueue.dataplane.priority``): the classifier
answers one that waited too long with 504, its forward pass never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import numpy as np

from visionqueue.dataplane.socket_frames import (
    ANSWER,
    OK,
    REQUEST,
    FrameError,
    Request,
    answer_frame,
    error_frame,
    parse_answer,
    parse_request,
    request_header,
)

logger = logging.getLogger(__name__)

# (api, crops, class of work, seconds it may wait before its forward pass or None)
Infer = Callable[[str, np.ndarray, int, float | None], Awaitable[np.ndarray]]


class CallMetrics(Protocol):
    """What the classifier counts per call (``visionqueue.bento.metrics.RouteMetrics``)."""

    def started(self, api: str) -> None: ...

    def finished(self, api: str, status: int, seconds: float) -> None: ...


class CropSocketError(Exception):
    """A call over the crop socket failed; ``status`` is the HTTP status it stands for."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


class CropSocketMissing(CropSocketError):
    """No classifier worker ever opened its crop socket (it serves HTTP only)."""


def socket_paths(service: str, workers: int, runner_map: str | None = None) -> list[Path]:
    """Return the crop socket of each of ``service``'s workers; empty if it is not local.

    The sockets live beside BentoML's own Unix socket for ``service`` (from
    ``BENTOML_RUNNER_MAP``), so two stacks on one host never share one.
    """
    raw = runner_map if runner_map is not None else os.environ.get("BENTOML_RUNNER_MAP", "")
    try:
        url = json.loads(raw).get(service, "") if raw else ""
    except (ValueError, AttributeError):
        return []
    parsed = urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("file", "unix"):  # BentoML writes file://
        return []
    folder = Path(unquote(parsed.path)).parent
    return [folder / f"{service}-crops-{index}.sock" for index in range(1, workers + 1)]


# --- the classifier's side --------------------------------------------------------------------


async def serve_crops(
    path: Path, apis: frozenset[str], infer: Infer, metrics: CallMetrics
) -> asyncio.AbstractServer:
    """Listen on ``path``; run each call's crops through ``infer`` (one of ``apis``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                request = parse_request(await reader.readexactly(REQUEST.size))
                api = (await reader.readexactly(request.name_len)).decode()
                body = await reader.readexactly(int(np.prod(request.shape)))
                crops = np.frombuffer(body, np.uint8).reshape(request.shape)
                task = asyncio.create_task(answer(writer, request, api, crops))
                calls.add(task)
                task.add_done_callback(calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front went away (or restarts): its calls' answers have nowhere to go
        except (FrameError, UnicodeDecodeError) as exc:
            logger.warning("crop socket %s: closing a connection that sent %s", path, exc)
        finally:
            for task in calls:
                task.cancel()
            writer.close()

    async def answer(
        writer: asyncio.StreamWriter, request: Request, api: str, crops: np.ndarray
    ) -> None:
        call_id = request.call_id
        timeout_s = request.timeout_ms / 1000 if request.timeout_ms else None
        if api not in apis:
            writer.write(error_frame(call_id, 404, f"no batch API {api!r}"))
            return
        started = time.perf_counter()
        metrics.started(api)
        status, reason = OK, ""
        try:
            rows = await infer(api, crops, request.work_class, timeout_s)
        except asyncio.CancelledError:  # the batch queue's deadline, or shutting down
            status, reason = 503, "the batch queue dropped the call"
        except Exception as exc:  # the status BentoML's route answers for the same error
            status = int(getattr(getattr(exc, "error_code", None), "value", 500))
            reason = type(exc).__name__
            if status >= 500 and status not in (503, 504):
                logger.exception("crop socket call to %s failed", api)
        metrics.finished(api, status, time.perf_counter() - started)
        if writer.is_closing():
            return
        if status == OK:
            writer.writelines(answer_frame(call_id, rows))
        else:
            writer.write(error_frame(call_id, status, reason))
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    path.unlink(missing_ok=True)  # a previous worker of this index died without cleaning up
    server = await asyncio.start_unix_server(handle, path)
    path.chmod(0o600)  # in BentoML's 0700 folder already: the server's own user only
    return server


# --- the front's side -------------------------------------------------------------------------


class _Connection:
    """One open connection and the calls waiting for an answer on it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.calls: dict[int, asyncio.Future[np.ndarray]] = {}
        self.reader: asyncio.Task[None] | None = None  # held: the loop keeps weak references

    def fail_all(self, exc: CropSocketError) -> None:
        calls, self.calls = self.calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(exc)


class _Link:
    """The connection to one classifier worker, opened on first use and after a break."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: _Connection | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def outstanding(self) -> int:
        return len(self._connection.calls) if self._connection is not None else 0

    async def connection(self) -> _Connection:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            current = self._connection
            if current is None or current.writer.is_closing():
                reader, writer = await asyncio.open_unix_connection(self.path)
                current = self._connection = _Connection(writer)
                current.reader = asyncio.create_task(self._read(reader, current))
            return current

    async def _read(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        try:
            while True:
                call_id, status, shape, body_len = parse_answer(
                    await reader.readexactly(ANSWER.size)
                )
                body = await reader.readexactly(body_len)
                future = connection.calls.pop(call_id, None)
                if future is None or future.done():
                    continue  # its caller gave up (deadline)
                if status == OK:
                    future.set_result(np.frombuffer(body, np.float32).reshape(shape))
                else:
                    reason = body.decode(errors="replace")
                    future.set_exception(
                        CropSocketError(f"classifier answered {status}: {reason}", status)
                    )
        except (asyncio.IncompleteReadError, ConnectionError, FrameError) as exc:
            connection.fail_all(CropSocketError(f"connection to the classifier lost ({exc!r})"))
        finally:
            connection.writer.close()
            if self._connection is connection:
                self._connection = None


class CropSocketClient:
    """Call the classifier's batch APIs over its workers' crop sockets."""

    def __init__(self, paths: list[Path]) -> None:
        if not paths:
            raise ValueError("no crop sockets")
        self._links = [_Link(path) for path in paths]
        self._next_id = 0
        self._turn = 0

    @property
    def paths(self) -> list[Path]:
        """The crop socket of each classifier worker, as the front was told at start-up."""
        return [link.path for link in self._links]

    async def call(
        self, api: str, crops: np.ndarray, work_class: int = 0, timeout_s: float | None = None
    ) -> np.ndarray:
        """Classify ``(N, H, W, 3)`` uint8 ``crops`` with ``api``; return its ``(N, C + 2)`` rows.

        ``work_class`` and ``timeout_s`` (how long it may wait for its forward pass) go to
        the classifier's priority queue.
        """
        timeout_ms = max(1, round(timeout_s * 1000)) if timeout_s is not None else 0
        header = request_header(self._next_call_id(), api, crops, work_class, timeout_ms)
        refused: list[tuple[Path, OSError]] = []
        # the least busy worker first, ties taken in turn; one not listening is skipped
        self._turn = (self._turn + 1) % len(self._links)
        turn = self._links[self._turn :] + self._links[: self._turn]
        for link in sorted(turn, key=lambda link: link.outstanding):
            try:
                connection = await link.connection()
            except OSError as exc:
                refused.append((link.path, exc))
                continue
            return await self._send(connection, header, crops)
        why = "; ".join(f"{path.name}: {exc.strerror or exc}" for path, exc in refused)
        if all(isinstance(exc, FileNotFoundError) for _, exc in refused):
            raise CropSocketMissing(f"no classifier worker opened its crop socket ({why})")
        raise CropSocketError(f"no classifier worker is listening ({why})")

    def _next_call_id(self) -> int:
        self._next_id = (self._next_id + 1) % 2**32
        return self._next_id

    async def _send(self, connection: _Connection, header: bytes, crops: np.ndarray) -> np.ndarray:
        call_id = REQUEST.unpack_from(header)[1]
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        connection.calls[call_id] = future
        try:
            body = np.ascontiguousarray(crops).data.cast("B")
            connection.writer.writelines([header, body])
            await connection.writer.drain()
            return await future
        except ConnectionError as exc:
            raise CropSocketError(f"connection to the classifier lost ({exc!r})") from exc
        finally:
            connection.calls.pop(call_id, None)
