"""deploy/k8s: every overlay renders, validates against the schemas, and matches the application.

``kubectl kustomize`` renders each overlay (in a copy, with its ``secrets.env.example`` as the
secrets). Built-in objects are checked with ``kubernetes-validate`` (the Kubernetes OpenAPI
schemas of a current release, strict: unknown fields refused), KEDA's objects with
``@kubernetes-models/keda`` (KEDA's CRD schemas), installed by ``npm ci`` from the lockfile in
``tests/support/keda``. Then what the manifests say is compared with the code: every ``VQ_*``
variable is a setting, ports, probe paths and commands are the application's, the queue KEDA
watches is the one Celery fills, and secrets stay out of ConfigMaps.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from jobs.celery_app import Queues
from tests.support.prerequisites import missing, require_binary, require_module
from visionqueue.api.health import HEALTH_PATHS
from visionqueue.config_docs import variables
from visionqueue.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KEDA_PACKAGE = ROOT / "tests" / "support" / "keda"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
OVERLAYS = ("external", "all-in-one", "gpu")
# a current Kubernetes release whose schemas kubernetes-validate bundles
KUBERNETES_VERSION = "1.35.0"
KEDA_API = "keda.sh/v1alpha1"
OUR_IMAGE = re.compile(r"(^|/)visionqueue(:|$)")
# variables the manifests set that are not VisionQueue settings, and who reads them
FOREIGN_VARIABLES = {
    "REDIS_ADDRESS": "KEDA's redis scaler (addressFromEnv)",
    "REDIS_PASSWORD": "KEDA's TriggerAuthentication and the all-in-one Redis",
    "POSTGRES_PASSWORD": "the all-in-one PostgreSQL image",
    "POSTGRES_USER": "the all-in-one PostgreSQL image",
    "POSTGRES_DB": "the all-in-one PostgreSQL image",
    "PGDATA": "the all-in-one PostgreSQL image",
    "MINIO_ROOT_USER": "the all-in-one MinIO image",
    "MINIO_ROOT_PASSWORD": "the all-in-one MinIO image",
}


def _render(overlay: str, workdir: Path) -> list[dict[str, Any]]:
    kubectl = require_binary(
        "kubectl", "kubectl with kustomize built in, from Kubernetes' releases"
    )
    tree = workdir / "k8s"
    if not tree.exists():
        shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
        for example in tree.rglob("secrets.env.example"):
            shutil.copy(example, example.with_name("secrets.env"))
    done = subprocess.run(
        [kubectl, "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    workdir = tmp_path_factory.mktemp("k8s")
    return {overlay: _render(overlay, workdir) for overlay in OVERLAYS}


def _objects(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for overlay, objects in rendered.items():
        for obj in objects:
            yield overlay, obj


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]["spec"]]
    return []


def _containers(obj: dict[str, Any], init: bool = True) -> Iterator[dict[str, Any]]:
    for pod in _pod_specs(obj):
        yield from pod.get("containers", [])
        if init:
            yield from pod.get("initContainers", [])


def _ours(container: dict[str, Any]) -> bool:
    return bool(OUR_IMAGE.search(container["image"]))


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def _secret_variables(cls: type[BaseSettings] = Settings) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names |= _secret_variables(annotation)
        elif annotation is SecretStr or "SecretStr" in str(annotation):
            names.add(f"{prefix}{name}".upper())
    return names


def test_every_overlay_renders_the_tiers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objects in rendered.items():
        kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for tier in ("api", "classifier", "worker", "webhooks", "beat"):
            assert ("Deployment", f"visionqueue-{tier}") in kinds, overlay
        assert ("Job", "visionqueue-import-model") in kinds, overlay
        assert ("ScaledObject", "visionqueue-worker") in kinds, overlay
        assert ("HorizontalPodAutoscaler", "visionqueue-classifier") in kinds, overlay
        assert ("NetworkPolicy", "visionqueue-classifier") in kinds, overlay
    in_cluster = {o["metadata"]["name"] for o in rendered["all-in-one"]}
    assert {"visionqueue-postgres", "visionqueue-redis", "visionqueue-minio"} <= in_cluster
    assert _named(rendered["all-in-one"], "StatefulSet", "visionqueue-postgres")
    assert "visionqueue-postgres" not in {o["metadata"]["name"] for o in rendered["external"]}


def test_builtin_objects_validate_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    validator = require_module("kubernetes_validate", "pip install kubernetes-validate")
    jsonschema = require_module("jsonschema", "pip install kubernetes-validate")
    checked = 0
    for overlay, obj in _objects(rendered):
        if obj["apiVersion"] == KEDA_API:
            continue
        try:
            validator.validate(obj, KUBERNETES_VERSION, strict=True)
        except jsonschema.ValidationError as exc:  # kubernetes-validate's own is a subclass
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked > 3 * 15


def test_the_validation_catches_a_misspelt_field() -> None:
    validator = require_module("kubernetes_validate", "pip install kubernetes-validate")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selector": {"a": "b"}, "portz": [{"port": 1}]},
    }
    with pytest.raises(validator.ValidationError):
        validator.validate(service, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def keda_validator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install tests/support/keda from its lockfile (npm ci) in a folder of its own."""
    node = require_binary("node", "apt-get install nodejs npm")
    npm = require_binary("npm", "apt-get install npm")
    folder = tmp_path_factory.mktemp("keda")
    for name in ("package.json", "package-lock.json", ".npmrc", "validate.mjs"):
        shutil.copy(KEDA_PACKAGE / name, folder / name)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        missing("@kubernetes-models/keda", f"npm ci failed: {done.stderr.strip()[-500:]}")
    assert Path(node).exists()
    return folder


def _validate_keda(folder: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["node", "validate.mjs"],
        cwd=folder,
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip(), done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_keda_objects_validate_against_kedas_schemas(
    rendered: dict[str, list[dict[str, Any]]], keda_validator: Path
) -> None:
    keda = [obj for _, obj in _objects(rendered) if obj["apiVersion"] == KEDA_API]
    assert {o["kind"] for o in keda} == {"ScaledObject", "TriggerAuthentication"}
    results = _validate_keda(keda_validator, keda)
    assert len(results) == len(keda)
    assert [r for r in results if r["error"] is not None] == []
    # and the validator can fail: a ScaledObject without its target, a count as text
    broken = json.loads(json.dumps(keda[0] if keda[0]["kind"] == "ScaledObject" else keda[1]))
    del broken["spec"]["scaleTargetRef"]
    broken["spec"]["minReplicaCount"] = "zero"
    (result,) = _validate_keda(keda_validator, [broken])
    assert "scaleTargetRef" in result["error"] and "minReplicaCount" in result["error"]


def test_every_vq_variable_is_a_setting(rendered: dict[str, list[dict[str, Any]]]) -> None:
    settings = {name for _, name, _, _ in variables()}
    seen: set[str] = set()
    for overlay, obj in _objects(rendered):
        names: list[str] = []
        if obj["kind"] in ("ConfigMap", "Secret"):
            names += list(obj.get("data", {}))
        for container in _containers(obj):
            names += [e["name"] for e in container.get("env", [])]
        for name in names:
            seen.add(name)
            if name.startswith("VQ_"):
                assert name in settings, f"{overlay}: {obj['kind']} sets {name}, not a setting"
            else:
                assert name in FOREIGN_VARIABLES, f"{overlay}: {name} is read by nobody we know"
    assert {"VQ_DATABASE_URL", "VQ_BROKER_URL", "VQ_CLASSIFIER_URL", "VQ_S3_MODELS_BUCKET"} <= seen


def test_secrets_never_sit_in_a_config_map(rendered: dict[str, list[dict[str, Any]]]) -> None:
    secret = _secret_variables() | {"VQ_DATABASE_URL", "VQ_BROKER_URL"}
    secret |= {n for n in FOREIGN_VARIABLES if "PASSWORD" in n}
    assert {"VQ_SIGNING_KEY", "VQ_S3_SECRET_KEY", "VQ_CLASSIFIER_TOKEN"} <= secret
    for overlay, obj in _objects(rendered):
        if obj["kind"] == "ConfigMap":
            assert not secret & set(obj.get("data", {})), f"{overlay}: {obj['metadata']['name']}"
        for container in _containers(obj):
            for env in container.get("env", []):
                if env["name"] in secret:
                    assert "valueFrom" in env, f"{overlay}: {env['name']} written in clear"


def _entrypoint_roles() -> set[str]:
    text = ENTRYPOINT.read_text(encoding="utf-8")
    return set(re.findall(r"^    ([a-z-]+)\)$", text, re.MULTILINE))


def test_ports_probes_and_commands_match_the_application(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    roles = _entrypoint_roles()
    assert {"api", "classifier", "worker", "webhooks", "beat", "migrate"} <= roles
    entrypoint = ENTRYPOINT.read_text(encoding="utf-8")
    classifier_port = int(re.search(r"service:Classifier .*--port (\d+)", entrypoint)[1])
    defaults = {name: default for _, name, default, _ in variables()}
    expected_ports = {
        "api": int(defaults["VQ_PORT"]),
        "classifier": classifier_port,
        "worker": int(defaults["VQ_WORKER_METRICS_PORT"]),
    }
    for overlay, objects in rendered.items():
        config = _named(objects, "ConfigMap", "visionqueue-config")["data"]
        for obj in objects:
            for container in _containers(obj):
                if _ours(container):
                    assert container["args"][0] in roles, f"{overlay}: {container['args']}"
        for tier, port in expected_ports.items():
            deployment = _named(objects, "Deployment", f"visionqueue-{tier}")
            (container,) = [c for c in _containers(deployment, init=False)]
            assert container["args"] == [tier]
            assert [p["containerPort"] for p in container["ports"]] == [port], overlay
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if tier == "api":
                assert env["VQ_PORT"] == str(port)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container and "httpGet" in container[probe]:
                    path = container[probe]["httpGet"]["path"]
                    assert path in HEALTH_PATHS or (tier == "worker" and path == "/metrics")
            if tier != "worker":
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        service = _named(objects, "Service", "visionqueue-classifier")
        assert config["VQ_CLASSIFIER_URL"] == (
            f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
        )
        assert service["spec"]["ports"][0]["port"] == classifier_port


def test_keda_watches_the_queues_celery_fills(rendered: dict[str, list[dict[str, Any]]]) -> None:
    queues = Queues.of(Settings(broker={"queue_prefix": ""}))
    for objects in rendered.values():
        config = _named(objects, "ConfigMap", "visionqueue-config")["data"]
        assert not config.get("VQ_BROKER_QUEUE_PREFIX"), "a prefix would rename the lists"
        jobs = _named(objects, "ScaledObject", "visionqueue-worker")["spec"]
        assert jobs["minReplicaCount"] == 0
        assert jobs["triggers"][0]["metadata"]["listName"] == queues.jobs
        hooks = _named(objects, "ScaledObject", "visionqueue-webhooks")["spec"]
        assert hooks["triggers"][0]["metadata"]["listName"] == queues.webhooks
        assert hooks["minReplicaCount"] >= 1  # the sweeps run there
        assert "REDIS_ADDRESS" in config
        auth = _named(objects, "TriggerAuthentication", "visionqueue-redis")["spec"]
        secret = _named(objects, "Secret", auth["secretTargetRef"][0]["name"])
        assert auth["secretTargetRef"][0]["key"] in secret["data"]


def test_pods_run_hardened(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, obj in _objects(rendered):
        for pod in _pod_specs(obj):
            where = f"{overlay}: {obj['kind']} {obj['metadata']['name']}"
            assert pod.get("automountServiceAccountToken") is False, where
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            for container in _containers(obj):
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                assert "requests" in container["resources"], where
                assert "memory" in container["resources"]["limits"], where
                if _ours(container):
                    assert context["readOnlyRootFilesystem"] is True, where


def test_only_the_front_and_the_workers_reach_the_classifier(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, objects in rendered.items():
        policy = _named(objects, "NetworkPolicy", "visionqueue-classifier")["spec"]
        allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        reach = {
            o["metadata"]["name"]
            for o in objects
            if o["kind"] == "Deployment"
            and allowed.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        }
        assert reach == {"visionqueue-api", "visionqueue-worker"}, overlay
        for tier in ("api", "classifier", "worker"):
            assert _named(objects, "PodDisruptionBudget", f"visionqueue-{tier}")


def test_the_gpu_overlay_puts_the_classifier_on_gpu_nodes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    classifier = _named(rendered["gpu"], "Deployment", "visionqueue-classifier")
    pod = classifier["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in container["env"]}["VQ_DEVICE"] == "cuda"
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    for overlay in ("external", "all-in-one"):
        other = _named(rendered[overlay], "Deployment", "visionqueue-classifier")
        assert "nvidia.com/gpu" not in json.dumps(other)
