"""prometheus.yml: valid for promtool, and scrapes every process the compose stack runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.prerequisites import require_binary

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"


def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    return {job["job_name"]: job for job in config["scrape_configs"]}


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    return services


def test_promtool_accepts_config(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "Debian: apt-get install -y prometheus")
    # promtool opens the scrape token's file: put one where compose mounts it, here
    token = tmp_path / "metrics-token"
    token.write_text("scrape-token\n")
    text = PROMETHEUS.read_text()
    assert "/etc/prometheus/metrics-token" in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/metrics-token", str(token)))
    result = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrapes_api_and_flower_on_their_compose_ports() -> None:
    jobs = scrape_jobs()
    assert set(jobs) == {"api", "worker", "webhooks", "flower"}
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:3000"]
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    services = compose_services()
    assert services["api"]["ports"][0].endswith(":3000:3000")
    assert services["flower"]["ports"][0].endswith(":5555:5555")


def test_every_worker_replica_is_discovered_by_dns() -> None:
    worker = scrape_jobs()["worker"]
    assert "static_configs" not in worker
    [sd] = worker["dns_sd_configs"]
    assert sd == {"names": ["worker"], "type": "A", "port": 9808, "refresh_interval": "15s"}
    assert "worker" in compose_services()


def test_prometheus_service_mounts_this_file() -> None:
    volumes = compose_services()["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_the_api_job_sends_the_metrics_token_compose_hands_prometheus() -> None:
    api = scrape_jobs()["api"]
    assert api["authorization"]["credentials_file"] == "/etc/prometheus/metrics-token"
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    [mount] = compose["services"]["prometheus"]["configs"]
    assert mount == {"source": "metrics-token", "target": "/etc/prometheus/metrics-token"}
    assert "VQ_METRICS_TOKEN" in compose["configs"]["metrics-token"]["content"]
    assert "VQ_METRICS_TOKEN" in compose["x-app-environment"]
