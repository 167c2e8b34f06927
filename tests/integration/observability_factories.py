"""Helpers for observability tests: scraped samples, a metrics-serving worker, a real Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import ROOT, free_port, spawn, stop, wait_ready

COMPOSE_PROMETHEUS = ROOT / "prometheus.yml"
# Grafana's range variables, replaced so Prometheus can evaluate the dashboard's queries.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m", "$__interval": "1s"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """The samples of one ``/metrics`` answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    @classmethod
    def of(cls, url: str) -> Scrape:
        resp = httpx.get(url, timeout=10)
        resp.raise_for_status()
        return cls(resp.text)

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def total(self, name: str, **labels: str) -> float:
        """Sum the samples named ``name`` whose labels include ``labels``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


@dataclass(frozen=True)
class MetricsWorker:
    proc: Any
    metrics_url: str
    log: Path


@contextlib.contextmanager
def metrics_worker(stack: Any, **env: str) -> Iterator[MetricsWorker]:
    """Start a stack worker that serves its metrics on a free loopback port; stop it after."""
    port = free_port()
    name = f"obs-{uuid.uuid4().hex[:6]}"
    worker_env = {"VQ_WORKER_METRICS_PORT": str(port), **env}
    with stack.worker(concurrency=4, name=name, env=worker_env) as proc:
        yield MetricsWorker(
            proc, f"http://127.0.0.1:{port}/metrics", stack.log_dir / f"worker-{name}.log"
        )


def predict_many(url: str, payloads: list[bytes], concurrency: int = 8) -> list[httpx.Response]:
    """POST every payload to ``/predict`` on its own connection, ``concurrency`` at a time."""

    async def run() -> list[httpx.Response]:
        gate = asyncio.Semaphore(concurrency)

        async def one(data: bytes) -> httpx.Response:
            async with gate, httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await client.post("/predict", files={"image": ("i.jpg", data)})

        return await asyncio.gather(*(one(d) for d in payloads))

    return asyncio.run(run())


def prometheus_config(targets: dict[str, str], interval: str = "1s") -> dict[str, Any]:
    """Return the compose ``prometheus.yml`` pointed at loopback ``targets`` (job -> host:port).

    Jobs without a target are dropped; the scrape interval is shortened for tests.
    """
    config: dict[str, Any] = yaml.safe_load(COMPOSE_PROMETHEUS.read_text(encoding="utf-8"))
    config["global"] = {
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        # compose's token file is not here: the fronts these tests scrape have no token
        job = {
            k: v for k, v in job.items() if not k.endswith("_sd_configs") and k != "authorization"
        }
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        jobs.append(job)
    missing = set(targets) - {job["job_name"] for job in jobs}
    assert not missing, f"prometheus.yml has no job {sorted(missing)}"
    config["scrape_configs"] = jobs
    return config


@contextlib.contextmanager
def prometheus_server(binary: str, config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Run a real Prometheus with ``config`` on a free loopback port; yield its base URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = workdir / "prometheus.log"
    args = [
        binary,
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'data'}",
        "--log.level=warn",
    ]
    proc = spawn(args, {"PATH": "/usr/bin:/bin"}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 30, log, ready=lambda u: httpx.get(f"{u}/-/ready").status_code == 200)
        yield url
    finally:
        stop(proc)


def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    """Evaluate ``expr`` now; return the result vector (fail on a PromQL error)."""
    resp = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(result: list[dict[str, Any]]) -> float | None:
    """Return the value of a one-element result vector, or None when it is empty."""
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr
