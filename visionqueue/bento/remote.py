"""The front's calls to the classifier service carry ``VQ_CLASSIFIER_TOKEN``.

BentoML 1.4.40's ``bentoml.depends`` builds a ``RemoteProxy`` that takes no token. Its async
client's ``default_headers`` is the very dict its session manager builds every aiohttp session
from (also after a session is recycled), so a header added there before the first call goes with
every call. Not a patch: nothing of BentoML's is replaced; ``tests/unit/test_remote_token.py``
pins the behaviour for an upgrade (docs/bentoml-patches.md).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from visionqueue.core.errors import DeadlineExceeded, Unavailable, VQError

REFUSED_TOKEN = (
    "the classifier refused this front's credentials: give the classifier and the front the "
    "same VQ_CLASSIFIER_TOKEN"
)


def send_token(proxy: Any, token: str) -> None:
    """Make every call through ``proxy`` (a dependency's ``RemoteProxy``) send the token."""
    proxy.to_async.default_headers["Authorization"] = f"Bearer {token}"


def refused_token(exc: BaseException) -> bool:
    """Whether a dependency call failed because the classifier refused our token (401, 403).

    BentoML's client raises its ``BentoMLException`` with the answer's status as ``error_code``.
    """
    return getattr(exc, "error_code", None) in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)


def classifier_failure(exc: BaseException) -> VQError:
    """The client-facing error for a failed call into the classifier (any transport).

    A refused token and an overloaded or dead classifier are a 503; a call that waited past
    its deadline in the classifier's priority queue (504 over either transport, or the
    front's own wait timing out) is ``DeadlineExceeded``, its forward pass never run.
    """
    if refused_token(exc):
        return Unavailable(REFUSED_TOKEN, retry_after=1)
    status = getattr(exc, "error_code", None) or getattr(exc, "status", None)
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return DeadlineExceeded("the request waited past its deadline; it was not classified")
    return Unavailable("the classifier is overloaded or unavailable; retry shortly", retry_after=1)
