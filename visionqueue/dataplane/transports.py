"""How crops reach a served model's batch queue: one interface, three ways.

A ``Transport`` calls one model's batch API (``api``) with ``(N, S, S, 3)`` uint8 crops and
answers the wire rows (``visionqueue.dataplane.rows``); ``describe`` asks for a model's
versions (``model_info``). The front picks one at start-up (``front_transport``):

- ``CropSocketTransport``: one frame each way over a classifier worker's Unix socket into the
  same batching dispatcher BentoML's route uses (``crop_socket``; ``VQ_CLASSIFIER_TRANSPORT``);
- ``DependencyTransport``: BentoML's inter-service client, to the classifier in the same
  ``bentoml serve`` (pickled arrays) or to one served on its own (``VQ_CLASSIFIER_URL``: JSON,
  crops packed by ``crops_wire``).

The workers' synchronous twin of the remote one is ``jobs.classifier_client``. Every call
carries its priority class and how long it may wait for its forward pass into the classifier
worker's priority queue: in the crop socket's frame, or as ``prioritized_{api}``'s fields
(docs/priority.md); one that waited too long is a 504 ``DeadlineExceeded``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import anyio
import numpy as np

from visionqueue.bento.remote import classifier_failure
from visionqueue.dataplane.crop_socket import CropSocketClient, CropSocketError, CropSocketMissing
from visionqueue.dataplane.crops_wire import pack_crops, prioritized_api
from visionqueue.dataplane.priority import Priority

CLASSIFY_DEADLINE_S = 90.0


class Transport(Protocol):
    """Calls into the classifier service."""

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        """Run ``crops`` through the batch API ``api`` in ``priority``, waiting at most
        ``timeout_s`` for the forward pass; return ``(N, C + 2)`` wire rows."""
        ...

    async def describe(self, name: str) -> dict[str, Any]:
        """The classifier's ``model_info`` for ``name``: current version and versions served."""
        ...


def timeout_ms(timeout_s: float | None) -> int:
    """A wait limit as the classifier's fields spell it: milliseconds, at least 1; 0: none."""
    return max(1, round(timeout_s * 1000)) if timeout_s is not None else 0


class DependencyTransport:
    """BentoML's client of the classifier dependency (``bentoml.depends``)."""

    def __init__(self, proxy: Any, remote: bool) -> None:
        self._proxy = proxy
        self._remote = remote  # served on its own: JSON over the network, crops packed

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        # the priority queue's route, local or remote: packed crops, the class, the timeout
        call = getattr(self._proxy.to_async, prioritized_api(api))
        rows = await call(
            crops=pack_crops(crops), priority=priority.label, timeout_ms=timeout_ms(timeout_s)
        )
        return np.asarray(rows, np.float32)

    async def describe(self, name: str) -> dict[str, Any]:
        return dict(await self._proxy.to_async.model_info(name=name))


class CropSocketTransport:
    """The crop sockets; ``fallback`` when the classifier opened none, and for descriptions."""

    def __init__(self, client: CropSocketClient, fallback: Transport) -> None:
        self._client = client
        self._fallback = fallback

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        with contextlib.suppress(CropSocketMissing):  # the classifier serves HTTP only
            return await self._client.call(api, crops, int(priority), timeout_s)
        return await self._fallback.call(api, crops, priority, timeout_s)

    async def describe(self, name: str) -> dict[str, Any]:
        return await self._fallback.describe(name)


class GuardedTransport:
    """Bound every call by a deadline and turn a transport's failure into our ``Unavailable``."""

    def __init__(self, inner: Transport, deadline_s: float = CLASSIFY_DEADLINE_S) -> None:
        self._inner = inner
        self._deadline_s = deadline_s

    async def call(
        self, api: str, crops: np.ndarray, priority: Priority, timeout_s: float | None = None
    ) -> np.ndarray:
        from aiohttp import ClientError
        from bentoml.exceptions import BentoMLException

        try:
            # a classifier that died after loading must not hold the caller for BentoML's
            # 120 s traffic timeout and then answer outside our error envelope
            with anyio.fail_after(self._deadline_s):
                return await self._inner.call(api, crops, priority, timeout_s)
        except (BentoMLException, TimeoutError, ClientError, CropSocketError) as exc:
            raise classifier_failure(exc) from exc

    async def describe(self, name: str) -> dict[str, Any]:
        return await self._inner.describe(name)  # the registry bounds and maps descriptions


def front_transport(proxy: Any, remote: bool, socket: CropSocketClient | None) -> Transport:
    """The front's way to its classifier: the crop socket if there is one, else BentoML's client."""
    dependency = DependencyTransport(proxy, remote)
    inner: Transport = dependency if socket is None else CropSocketTransport(socket, dependency)
    return GuardedTransport(inner)
