"""docker-compose.yml: valid compose-spec, secrets fail fast, health-gated start-up order; and
deploy/compose.classifier.yml, the classifier as a service of its own on top of it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
CLASSIFIER_OVERRIDE = ROOT / "deploy" / "compose.classifier.yml"
CLASSIFIER_URL = "http://classifier:3100"

APP_SERVICES = ("migrate", "api", "worker", "webhooks", "beat", "flower")
ONE_SHOT = ("migrate",)
EXPECTED_SERVICES = {*APP_SERVICES, "redis", "postgres", "minio", "prometheus", "grafana"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
_INTERPOLATION = re.compile(
    r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
)
_BARE_VARIABLE = re.compile(r"(?<!\$)\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def compose_text(path: Path = COMPOSE) -> str:
    return path.read_text(encoding="utf-8")


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    """Return a compose file with YAML anchors and merge keys resolved."""
    data = yaml.safe_load(compose_text(path))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def split_services() -> dict[str, dict[str, Any]]:
    """Return the services of ``-f docker-compose.yml -f deploy/compose.classifier.yml``.

    Compose merges a later file's service into the earlier one of the same name, mapping by
    mapping (``environment``, ``depends_on``); the override uses nothing else.
    """
    merged = services()
    for name, extra in compose(CLASSIFIER_OVERRIDE)["services"].items():
        service = dict(merged.get(name, {}))
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(service.get(key), dict):
                service[key] = {**service[key], **value}
            else:
                assert key not in service, f"{name}.{key}: only mappings merge key by key"
                service[key] = value
        merged[name] = service
    return merged


def required_variables() -> set[str]:
    """Return every variable compose refuses to run without (``${VAR:?message}``)."""
    return {m["name"] for m in _INTERPOLATION.finditer(compose_text()) if m["op"] in (":?", "?")}


def env_example() -> dict[str, str]:
    """Return the uncommented ``NAME=value`` lines of deploy/compose.env.example."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep, f"not NAME=value: {line!r}"
        values[name.strip()] = value.strip()
    return values


@pytest.mark.parametrize("path", [COMPOSE, CLASSIFIER_OVERRIDE], ids=lambda p: p.name)
def test_compose_validates_against_compose_spec(path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_defines_the_stack() -> None:
    assert set(services()) == EXPECTED_SERVICES


def test_required_secrets_are_listed_empty_in_env_example() -> None:
    required = required_variables()
    assert {
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "VQ_API_KEYS",
        "VQ_SIGNING_KEY",
        "FLOWER_BASIC_AUTH",
        "GRAFANA_ADMIN_PASSWORD",
    } <= required
    example = env_example()
    missing = required - set(example)
    assert not missing, f"add to deploy/compose.env.example: {sorted(missing)}"
    # Left empty, a copied-but-unfilled .env stops `docker compose` with the message.
    prefilled = {name for name in required if example[name]}
    assert not prefilled, f"secrets must not ship with a value: {sorted(prefilled)}"


@pytest.mark.parametrize("path", [COMPOSE, CLASSIFIER_OVERRIDE], ids=lambda p: p.name)
def test_every_interpolation_is_required_or_defaulted(path: Path) -> None:
    text = compose_text(path)
    for m in _INTERPOLATION.finditer(text):
        assert m["op"] in (":?", ":-"), f"${{{m['name']}}} needs ':?message' or ':-default'"
        if m["op"] == ":?":
            assert m["name"] in m["arg"], f"the message for {m['name']} should name it"
    unbraced = [m["name"] for m in _BARE_VARIABLE.finditer(text)]
    assert not unbraced, f"use ${{VAR:...}} (or $$ for a literal $): {unbraced}"


def test_app_services_share_one_image_built_from_containerfile() -> None:
    svc = services()
    images = {svc[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = svc[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == "deploy/Containerfile"
        assert (ROOT / build["dockerfile"]).is_file()
    assert [svc[name]["command"] for name in APP_SERVICES] == [
        ["migrate"],
        ["api"],
        ["worker"],
        ["webhooks"],
        ["beat"],
        ["flower"],
    ]


def test_worker_is_scalable() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker, "published ports collide under --scale worker=N"
    assert "9808" in [str(port) for port in worker.get("expose", [])]
    assert str(worker["environment"]["VQ_WORKER_METRICS_PORT"]) == "9808"
    assert worker["environment"]["VQ_WORKER_CLASSIFIER_URL"] == "http://api:3000"


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES - set(ONE_SHOT)))
def test_long_running_services_have_healthchecks(name: str) -> None:
    service = services()[name]
    test = service["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    assert service.get("restart") == "unless-stopped"


def test_one_shot_migrate_does_not_restart() -> None:
    migrate = services()["migrate"]
    assert migrate["restart"] == "no"
    assert "healthcheck" not in migrate


@pytest.mark.parametrize("merged", [services, split_services], ids=["default", "classifier"])
def test_start_up_waits_on_health_and_migrations(merged: Any) -> None:
    svc = merged()
    for name, service in svc.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in svc, f"{name} depends on unknown service {dep}"
            if dep in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", (name, dep)
            else:
                assert spec["condition"] == "service_healthy", (name, dep)
                assert "healthcheck" in svc[dep], f"{dep} has no healthcheck to wait on"
    for name in ("api", "worker"):
        assert svc[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert set(svc["api"]["depends_on"]) >= {"postgres", "redis", "minio"}
    assert svc["worker"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_postgres_uses_a_named_volume_and_pg_isready() -> None:
    postgres = services()["postgres"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose()["volumes"]


def test_app_environment_wires_the_backing_services() -> None:
    env = services()["api"]["environment"]
    assert env["VQ_ENV"] == "production"
    assert env["VQ_DATABASE_URL"].startswith("postgresql+psycopg://visionqueue:")
    assert env["VQ_DATABASE_URL"].endswith("@postgres:5432/visionqueue")
    assert env["VQ_BROKER_URL"] == "redis://redis:6379/0"
    assert env["VQ_S3_ENDPOINT"] == "http://minio:9000"
    postgres_env = services()["postgres"]["environment"]
    assert postgres_env["POSTGRES_USER"] == "visionqueue"
    assert postgres_env["POSTGRES_DB"] == "visionqueue"


def test_published_ports_bind_to_loopback_by_default() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("${VQ_BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_the_default_stack_runs_the_classifier_inside_the_api() -> None:
    for name, service in services().items():
        assert "classifier" not in service.get("depends_on", {}), name
        assert "VQ_CLASSIFIER_URL" not in service.get("environment", {}), name


def test_the_classifier_override_adds_a_private_classifier_from_the_same_image() -> None:
    svc = split_services()
    assert set(svc) == EXPECTED_SERVICES | {"classifier"}
    classifier, api = svc["classifier"], svc["api"]
    assert classifier["command"] == ["classifier"]
    assert (classifier["image"], classifier["build"]) == (api["image"], api["build"])
    assert "ports" not in classifier, "the classifier port is unauthenticated: keep it private"
    assert [str(port) for port in classifier["expose"]] == ["3100"]
    assert "http://127.0.0.1:3100/readyz" in classifier["healthcheck"]["test"][-1]
    assert classifier["restart"] == "unless-stopped"
    # it imports the model into the store the api used, before the api starts
    assert classifier["volumes"] == api["volumes"]
    assert classifier["environment"]["VQ_WEIGHTS"] == api["environment"]["VQ_WEIGHTS"]


def test_the_classifier_override_points_the_api_and_the_workers_at_it() -> None:
    svc = split_services()
    token = svc["classifier"]["environment"]["VQ_CLASSIFIER_TOKEN"]
    # required from .env: production refuses a split classifier without a token
    assert token.startswith("${VQ_CLASSIFIER_TOKEN:?")
    added = {"VQ_CLASSIFIER_URL": CLASSIFIER_URL, "VQ_CLASSIFIER_TOKEN": token}
    for name in ("api", "worker"):
        assert svc[name]["depends_on"]["classifier"]["condition"] == "service_healthy", name
        # the same token; the rest of the shared environment is kept
        assert svc[name]["environment"] == {**services()[name]["environment"], **added}, name
    others = set(APP_SERVICES) - {"api", "worker"}
    assert {name: svc[name] for name in others} == {name: services()[name] for name in others}


def test_the_workers_weigh_less_than_the_api_when_both_want_a_core() -> None:
    # in containers, cgroup weights decide between them; the workers' nice values only count
    # inside their own container (docs/priority.md)
    stack = services()
    assert int(stack["worker"]["cpu_shares"]) < int(stack["api"].get("cpu_shares", 1024))
