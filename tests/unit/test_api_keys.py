"""API-key checks: a typed verdict, constant-time comparison, the owner never the key."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from visionqueue.api.middleware import classifier_middleware
from visionqueue.api.middleware.auth import (
    ApiKeyAuth,
    ApiKeys,
    ClassifierTokenAuth,
    Verdict,
    key_owner,
)
from visionqueue.core.settings import ModelSettings


def test_no_keys_allows_everyone_as_the_anonymous_owner() -> None:
    assert ApiKeys([]).check(None) == Verdict(allowed=True, owner=None)
    assert ApiKeys([]).check("anything") == Verdict(allowed=True, owner=None)


def test_only_a_known_key_is_allowed_as_its_owner() -> None:
    keys = ApiKeys(["key-a", "key-b"])
    assert keys.check("key-b") == Verdict(allowed=True, owner=key_owner("key-b"))
    assert keys.check("key-c") == Verdict(allowed=False)
    assert keys.check(None) == Verdict(allowed=False)
    assert "key-b" not in key_owner("key-b")


async def _owner_echo(scope: Any, receive: Any, send: Any) -> None:
    owner = str(scope.get("state", {}).get("vq_owner")).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": owner})


def _get(app: Any, path: str, headers: dict[str, str]) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(main())


def test_the_middleware_files_jobs_under_the_owner_and_guards_metrics() -> None:
    app = ApiKeyAuth(_owner_echo, api_keys=["key-a"], metrics_token="scrape")
    assert _get(app, "/v1/jobs", {"Authorization": "Bearer key-a"}).text == key_owner("key-a")
    refused = _get(app, "/v1/jobs", {"Authorization": "Basic key-a"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert _get(app, "/metrics", {}).status_code == 401
    assert _get(app, "/metrics", {"Authorization": "Bearer key-a"}).status_code == 401
    assert _get(app, "/metrics", {"Authorization": "Bearer scrape"}).status_code == 200
    assert _get(app, "/livez", {}).status_code == 200  # neither protected nor metrics


def test_without_a_token_metrics_stay_open() -> None:
    app = ApiKeyAuth(_owner_echo, api_keys=["key-a"])
    assert _get(app, "/metrics", {}).status_code == 200


def test_the_classifier_token_guards_every_route_but_the_probes() -> None:
    app = ClassifierTokenAuth(_owner_echo, token="shared")
    for path in ("/packed_classify", "/model_info", "/metrics", "/docs.json", "/"):
        refused = _get(app, path, {})
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "unauthorized"
        assert "classifier token" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"] == "Bearer"
        assert _get(app, path, {"Authorization": "Bearer shared-not"}).status_code == 401
        assert _get(app, path, {"Authorization": "Bearer shared"}).status_code == 200
    for probe in ("/livez", "/readyz", "/healthz"):
        assert _get(app, probe, {}).status_code == 200, probe


def test_the_classifier_is_guarded_only_with_a_token() -> None:
    assert classifier_middleware(ModelSettings(classifier_token="")) == []  # type: ignore[arg-type]
    guarded = classifier_middleware(ModelSettings(classifier_token="t"))  # type: ignore[arg-type]
    assert guarded == [(ClassifierTokenAuth, {"token": "t"})]


def test_the_service_token_opens_predict_only_and_owns_no_jobs() -> None:
    app = ApiKeyAuth(_owner_echo, api_keys=["key-a"], service_token="workers-own")
    service = {"Authorization": "Bearer workers-own"}
    assert _get(app, "/predict", service).status_code == 200
    assert _get(app, "/predict", service).text == "None"  # no tenant's owner id
    for path in ("/v1/jobs", "/predictions/resnet18", "/classify", "/v1/webhook-secret"):
        assert _get(app, path, service).status_code == 401, path
    assert _get(app, "/predict", {"Authorization": "Bearer workers-own-not"}).status_code == 401
    no_token = ApiKeyAuth(_owner_echo, api_keys=["key-a"])
    assert _get(no_token, "/predict", {"Authorization": "Bearer "}).status_code == 401


def test_the_service_token_opens_the_batch_workers_calls_and_nothing_else() -> None:
    app = ApiKeyAuth(_owner_echo, api_keys=["key-a"], service_token="workers-own")
    service = {"Authorization": "Bearer workers-own"}
    opened = [
        ("POST", "/v1/batches/crops"),
        ("GET", "/v1/batches/crops/classifier"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/effnet"),
    ]
    for method, path in opened:
        resp = _request(app, method, path, service)
        assert (resp.status_code, resp.text) == (200, "None"), (method, path)  # no owner
    refused = [
        ("GET", "/v1/batches/crops"),  # a batch named "crops", as the anonymous owner
        ("GET", "/v1/batches/crops/results"),  # its results
        ("GET", "/v1/batches"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/b-1/deliveries"),
        ("POST", "/v1/batches/b-1/deliveries/redeliver"),
        ("POST", "/v1/models"),
        ("POST", "/v1/models/effnet"),
        ("GET", "/v1/modelsx"),
        ("GET", "/v1/jobs"),
    ]
    for method, path in refused:
        assert _request(app, method, path, service).status_code == 401, (method, path)
    wrong = {"Authorization": "Bearer workers-own-not"}
    assert _request(app, "POST", "/v1/batches/crops", wrong).status_code == 401
    no_token = ApiKeyAuth(_owner_echo, api_keys=["key-a"])
    assert (
        _request(no_token, "POST", "/v1/batches/crops", {"Authorization": "Bearer "}).status_code
        == 401
    )


def _request(app: Any, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(main())
