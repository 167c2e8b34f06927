"""/readyz and the /metrics backlog gauges query the backends at most once per interval.

Real backends of the embedded default (SQLite, the filesystem broker, the local image
directory); the SQL statements the engine runs and the broker connections kombu checks are
counted where they happen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from kombu import Connection
from sqlalchemy import event

from model_store.serving import ServedSpec
from persistence.migrate import upgrade_database
from visionqueue.api.app import attach_front, create_api_app
from visionqueue.api.backlog import BacklogGauges
from visionqueue.api.health import FrontHealth
from visionqueue.api.middleware.health import HealthRoutes
from visionqueue.api.resources import FrontResources, build_front_resources
from visionqueue.core.errors import ModelNotReady
from visionqueue.core.settings import Settings
from visionqueue.dataplane.registry import ServedModels


class Counts:
    def __init__(self) -> None:
        self.sql: list[str] = []
        self.broker = 0

    def statements(self, fragment: str) -> int:
        return sum(fragment in s for s in self.sql)


@pytest.fixture
def backends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Counts]]:
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings.database_url)
    resources = build_front_resources(settings)
    counts = Counts()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts.sql.append(statement)

    event.listen(resources.engine, "before_cursor_execute", record)
    ensure = Connection.ensure_connection

    def counted_ensure(self: Connection, *args: Any, **kwargs: Any) -> Any:
        counts.broker += 1
        return ensure(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "ensure_connection", counted_ensure)
    yield resources, counts
    event.remove(resources.engine, "before_cursor_execute", record)


async def _model_info(name: str) -> dict[str, Any]:
    info = {"tag": f"{name}:x", "weights": "imagenet1k_v1", "device": "cpu", "backend": "eager"}
    return {**info, "versions": {}}


async def _no_model(name: str) -> dict[str, Any]:
    raise ModelNotReady("the classifier is not ready yet", retry_after=2)


async def _never_called(api: str, crops: Any, priority: Any) -> Any:
    raise AssertionError("readiness never classifies")


def _attach(api: Any, resources: FrontResources, ttl_s: float, model: Any) -> None:
    """The front's wiring, with the classifier's description answered by ``model``."""
    spec = ServedSpec("resnet18", "resnet18:latest", "classify")
    classifier = SimpleNamespace(call=_never_called, describe=model)
    models = ServedModels([spec], classifier, max_batch=16, calls_in_flight=0)
    attach_front(api, resources, FrontHealth(models, resources, ttl_s))


async def _probe_readyz(
    resources: FrontResources, ttl_s: float, n: int, model: Any = _model_info
) -> list[httpx.Response]:
    api = create_api_app()
    _attach(api, resources, ttl_s, model)

    async def bentoml_own(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("health probes must not reach BentoML's own routes")

    transport = httpx.ASGITransport(app=HealthRoutes(bentoml_own, health_app=api))
    async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
        return list(await asyncio.gather(*(client.get("/readyz") for _ in range(n))))


def test_a_burst_of_readiness_probes_queries_each_backend_once(
    backends: tuple[FrontResources, Counts],
) -> None:
    resources, counts = backends
    answers = asyncio.run(_probe_readyz(resources, ttl_s=60, n=50))
    assert {r.status_code for r in answers} == {200}
    body = answers[0].json()
    assert body["checks"] == {"model": "ok", "database": "ok", "storage": "ok", "broker": "ok"}
    assert counts.statements("SELECT 1") == 1
    assert counts.broker == 1


def test_without_a_cache_every_probe_queries(backends: tuple[FrontResources, Counts]) -> None:
    resources, counts = backends
    asyncio.run(_probe_readyz(resources, ttl_s=0, n=5))
    assert counts.statements("SELECT 1") == 5
    assert counts.broker == 5


def test_probes_query_again_once_the_interval_has_passed(
    backends: tuple[FrontResources, Counts],
) -> None:
    resources, counts = backends
    ttl, duration = 0.4, 1.3

    async def probe_for_a_while() -> tuple[int, float]:
        api = create_api_app()
        _attach(api, resources, ttl, _model_info)
        transport = httpx.ASGITransport(app=api)
        sent = 0
        started = time.monotonic()
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            while time.monotonic() - started < duration:
                await asyncio.gather(*(client.get("/readyz") for _ in range(5)))
                sent += 5
        # the last round may end well after `duration` on a busy machine
        return sent, time.monotonic() - started

    sent, elapsed = asyncio.run(probe_for_a_while())
    queries = counts.statements("SELECT 1")
    assert 2 <= queries <= int(elapsed / ttl) + 1 < sent, (queries, elapsed, sent)


def test_a_not_ready_model_is_reported_with_the_backends(
    backends: tuple[FrontResources, Counts],
) -> None:
    resources, _ = backends
    [answer] = asyncio.run(_probe_readyz(resources, ttl_s=2, n=1, model=_no_model))
    assert answer.status_code == 503
    body = answer.json()
    assert body["ready"] is False and body["checks"]["database"] == "ok"
    assert body["reason"] == "model: the classifier is not ready to serve resnet18 yet"
    assert body["models"] == {
        "resnet18": {"ready": False, "reason": "the classifier is not ready to serve resnet18 yet"}
    }


def test_a_burst_of_scrapes_reads_the_backlog_once(
    backends: tuple[FrontResources, Counts],
) -> None:
    resources, counts = backends
    gauges = BacklogGauges(resources, ttl_s=60)
    with ThreadPoolExecutor(8) as pool:  # BentoML calls __metrics__ in worker threads
        pages = list(pool.map(lambda _: gauges.append_to("bentoml 1\n"), range(40)))
    assert len(set(pages)) == 1
    assert pages[0].startswith("bentoml 1\n")
    assert 'vq_jobs{status="pending"} 0' in pages[0]
    assert 'celery_queue_depth{queue="visionqueue"} 0' in pages[0]
    assert counts.statements("FROM jobs") == 1
    assert counts.broker == 1
