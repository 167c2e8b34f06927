"""The front's BentoML client of the classifier sends VQ_CLASSIFIER_TOKEN (visionqueue.bento.remote).

Pins what ``send_token`` relies on in BentoML: the headers a ``RemoteProxy``'s sessions carry,
the first one and one made after a recycle, are its client's ``default_headers``.
"""

from __future__ import annotations

import asyncio

from _bentoml_impl.client import RemoteProxy

from visionqueue.bento.remote import send_token


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
