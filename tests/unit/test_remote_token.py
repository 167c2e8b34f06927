"""The front's client of the classifier sends VQ_CLASSIFIER_TOKEN; a refused one is named.

``visionqueue.bento.remote``.

Pins what ``send_token`` relies on in BentoML: the headers a ``RemoteProxy``'s sessions carry,
the first one and one made after a recycle, are its client's ``default_headers``.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import pytest
from _bentoml_impl.client import RemoteProxy
from bentoml.exceptions import BentoMLException

from model_store.serving import ServedSpec
from visionqueue.bento.remote import REFUSED_TOKEN, refused_token, send_token
from visionqueue.core.errors import ModelNotReady
from visionqueue.dataplane.registry import ServedModels


def test_every_session_of_the_proxy_sends_the_token() -> None:
    proxy: RemoteProxy[None] = RemoteProxy("http://127.0.0.1:9", media_type="application/json")
    send_token(proxy, "shared")
    sessions = proxy.to_async._session_manager

    async def headers_of_two_sessions() -> list[str | None]:
        first = await sessions.get_session()
        sessions._created_at = 0.0  # past max_age: the next call recycles the session
        second = await sessions.get_session()
        assert second is not first
        seen = [first.headers.get("Authorization"), second.headers.get("Authorization")]
        await proxy.to_async.close()
        return seen

    assert asyncio.run(headers_of_two_sessions()) == ["Bearer shared", "Bearer shared"]


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (BentoMLException("Error making request: 401", error_code=HTTPStatus(401)), True),
        (BentoMLException("Error making request: 403", error_code=HTTPStatus(403)), True),
        (BentoMLException("Error making request: 503", error_code=HTTPStatus(503)), False),
        (TimeoutError(), False),
    ],
)
def test_a_refused_token_is_told_from_an_outage(exc: BaseException, refused: bool) -> None:
    assert refused_token(exc) is refused


def test_a_front_without_the_token_says_so_in_readiness() -> None:
    async def refusing(name: str) -> Any:
        raise BentoMLException("Error making request: 401", error_code=HTTPStatus(401))

    async def never(api: str, crops: Any, priority: Any) -> Any:
        raise AssertionError("describing never classifies")

    spec = ServedSpec("resnet18", "resnet18:latest", "classify")
    classifier = SimpleNamespace(call=never, describe=refusing)
    models = ServedModels([spec], classifier, max_batch=16, calls_in_flight=0)
    with pytest.raises(ModelNotReady) as caught:
        asyncio.run(models.info())
    assert caught.value.message == REFUSED_TOKEN
    assert "VQ_CLASSIFIER_TOKEN" in caught.value.message
