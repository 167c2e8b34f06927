"""Metrics labels: the route template a request reaches, one fixed label for the rest."""

from __future__ import annotations

from typing import Any

import pytest
from _bentoml_impl.server.mount import PassiveMount
from starlette.routing import Route, Router

from visionqueue.api.app import create_api_app
from visionqueue.bento.route_labels import UNMATCHED, find_router, route_label


@pytest.fixture(scope="module")
def router() -> Router:
    """BentoML's shape: its API routes, then our FastAPI app passively mounted at /."""
    return Router(
        routes=[
            Route("/predict", lambda _: None, methods=["POST"]),
            PassiveMount("/", create_api_app(), name="api"),
        ]
    )


@pytest.mark.parametrize(
    ("method", "path", "label"),
    [
        ("POST", "/predict", "/predict"),
        ("GET", "/v1/jobs/3f1c2b9a-0000-4000-8000-000000000001", "/v1/jobs/{job_id}"),
        ("DELETE", "/v1/jobs/anything", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/abc/deliveries", "/v1/jobs/{job_id}/deliveries"),
        ("GET", "/v1/images/images/ab/abcdef", "/v1/images/{key:path}"),
        ("POST", "/v2/models/resnet18/infer", "/v2/models/{name}/infer"),
        ("PUT", "/predictions/resnet18", "/predictions/{name}"),
        ("GET", "/task-status/xyz", "/task-status/{task_id}"),
        ("GET", "/random-probe-1234/5", UNMATCHED),
        ("GET", "/nope\n2026 forged", UNMATCHED),
    ],
)
def test_each_request_is_labelled_by_its_template(
    router: Router, method: str, path: str, label: str
) -> None:
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path, "headers": []}
    assert route_label(router, scope) == label


def test_the_router_is_found_below_a_middleware_chain(router: Router) -> None:
    class Layer:
        def __init__(self, app: Any) -> None:
            self.app = app

    assert find_router(Layer(Layer(router))) is router
    assert find_router(Layer(None)) is None
    assert route_label(None, {"type": "http", "path": "/predict"}) == UNMATCHED
