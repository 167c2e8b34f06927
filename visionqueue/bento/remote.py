"""The front's calls to the classifier service carry ``VQ_CLASSIFIER_TOKEN``.

BentoML 1.4.40's ``bentoml.depends`` builds a ``RemoteProxy`` that takes no token. Its async
client's ``default_headers`` is the very dict its session manager builds every aiohttp session
from (also after a session is recycled), so a header added there before the first call goes with
every call. Not a patch: nothing of BentoML's is replaced; ``tests/unit/test_remote_token.py``
pins the behaviour for an upgrade (docs/bentoml-patches.md).
"""

from __future__ import annotations

from typing import Any


def send_token(proxy: Any, token: str) -> None:
    """Make every call through ``proxy`` (a dependency's ``RemoteProxy``) send the token."""
    proxy.to_async.default_headers["Authorization"] = f"Bearer {token}"
