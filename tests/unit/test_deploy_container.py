"""deploy/Containerfile and deploy/entrypoint.sh: what each container role runs, as what user."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
CLASSIFIER_OVERRIDE = ROOT / "deploy" / "compose.classifier.yml"

# Commands the entrypoint may start; the stubs below record them instead.
STUBBED = ("python", "bentoml", "celery")
# First-party code the image leaves out on purpose: `visionqueue bench` imports it lazily.
DEV_ONLY = frozenset({"bench"})


def instructions() -> list[tuple[str, str]]:
    """Return the Containerfile's (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> list[list[str]]:
    """Run the entrypoint with recording stubs on PATH; return the commands it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "commands.log"
    for name in STUBBED:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n', encoding="utf-8")
        stub.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if not log.exists():
        return []
    return [shlex.split(line) for line in log.read_text(encoding="utf-8").splitlines()]


def test_image_runs_as_non_root() -> None:
    users = [arg for keyword, arg in instructions() if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    assert users[-1] not in ("root", "0", "0:0")


def _torch_install(tmp_path: Path, **env: str) -> list[str]:
    """Run the Containerfile's torch RUN line with a recording pip; return pip's arguments."""
    [run] = [arg for keyword, arg in instructions() if keyword == "RUN" and "torch==" in arg]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "pip.log"
    stub = bin_dir / "pip"
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > "{log}"\n')
    stub.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TORCH_VERSION": "2.14.1"}
    subprocess.run(["/bin/sh", "-c", run], env={**base, **env}, check=True, timeout=30)
    return log.read_text(encoding="utf-8").splitlines()


def test_torch_comes_from_pips_default_index_unless_one_is_given(tmp_path: Path) -> None:
    args = dict(
        arg.split("=", 1) for keyword, arg in instructions() if keyword == "ARG" and "=" in arg
    )
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["TORCH_INDEX_URL"] == ""
    assert "--index-url" not in " ".join(_torch_install(tmp_path, TORCH_INDEX_URL=""))
    given = _torch_install(tmp_path, TORCH_INDEX_URL="http://127.0.0.1:8080/cpu wheels")
    assert given[:3] == ["install", "--index-url", "http://127.0.0.1:8080/cpu wheels"]
    assert "torch==2.14.1" in given


def test_healthcheck_probes_readyz_with_python() -> None:
    [check] = [arg for keyword, arg in instructions() if keyword == "HEALTHCHECK"]
    assert '"python"' in check and "urllib.request" in check and "/readyz" in check


def test_every_copied_path_exists() -> None:
    for keyword, arg in instructions():
        if keyword != "COPY":
            continue
        sources = [part for part in arg.split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def copied_sources() -> set[str]:
    sources = set()
    for keyword, arg in instructions():
        if keyword == "COPY":
            sources |= {part.rstrip("/") for part in arg.split()[:-1] if not part.startswith("--")}
    return sources


def test_image_contains_every_first_party_import() -> None:
    first_party = {
        path.stem if path.suffix == ".py" else path.name
        for path in ROOT.iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").is_file()) and path.name != "tests"
    }
    copied = {Path(source).stem for source in copied_sources()}
    missing: dict[str, str] = {}
    for source in copied_sources():
        path = ROOT / source
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.suffix != ".py":
                continue
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in first_party and top not in copied | DEV_ONLY:
                        missing[top] = str(file.relative_to(ROOT))
    assert not missing, f"imported but not copied into the image: {missing}"


def test_entrypoint_is_valid_sh_and_executable() -> None:
    subprocess.run(["/bin/sh", "-n", str(ENTRYPOINT)], check=True, timeout=30)
    assert os.access(ENTRYPOINT, os.X_OK)


def test_entrypoint_handles_every_compose_role(tmp_path: Path) -> None:
    services = [
        svc
        for path in (COMPOSE, CLASSIFIER_OVERRIDE)
        for svc in yaml.safe_load(path.read_text(encoding="utf-8"))["services"].values()
    ]
    roles = {svc["command"][0] for svc in services if svc.get("build")}
    assert "classifier" in roles
    script = ENTRYPOINT.read_text(encoding="utf-8")
    for role in roles:
        assert re.search(rf"^\s+{re.escape(role)}\)$", script, re.MULTILINE), role


def test_api_imports_the_model_then_serves(tmp_path: Path) -> None:
    commands = run_entrypoint(tmp_path, "api", VQ_WEIGHTS="random", VQ_PORT="3000")
    assert commands == [
        ["python", "-m", "model_store", "import", "--if-missing", "--weights", "random"],
        ["bentoml", "serve", "service:VisionQueue", "--host", "0.0.0.0", "--port", "3000"],
    ]


def test_classifier_imports_the_model_then_serves_it_alone(tmp_path: Path) -> None:
    commands = run_entrypoint(tmp_path, "classifier", VQ_WEIGHTS="random", VQ_PORT="3000")
    assert commands == [
        ["python", "-m", "model_store", "import", "--if-missing", "--weights", "random"],
        ["bentoml", "serve", "service:Classifier", "--host", "0.0.0.0", "--port", "3100"],
    ]


def test_roles_that_load_no_model_import_none(tmp_path: Path) -> None:
    """A front with a classifier elsewhere, and classifiers fed by the shared bucket (k8s)."""
    (tmp_path / "api").mkdir()
    (tmp_path / "classifier").mkdir()
    front = run_entrypoint(tmp_path / "api", "api", VQ_CLASSIFIER_URL="http://c:3100")
    assert [c[:3] for c in front] == [["bentoml", "serve", "service:VisionQueue"]]
    shared = run_entrypoint(tmp_path / "classifier", "classifier", VQ_S3_MODELS_BUCKET="models")
    assert [c[:3] for c in shared] == [["bentoml", "serve", "service:Classifier"]]


def test_api_can_migrate_on_start(tmp_path: Path) -> None:
    commands = run_entrypoint(tmp_path, "api", VQ_MIGRATE_ON_START="true")
    assert commands[0][:5] == ["python", "-m", "model_store", "import", "--if-missing"]
    assert commands[0][-1] == "imagenet1k_v1"
    assert commands[1] == ["python", "-m", "persistence", "upgrade"]
    assert commands[2][:3] == ["bentoml", "serve", "service:VisionQueue"]


def test_job_and_webhook_workers_have_queues_of_their_own(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "hooks").mkdir()
    commands = run_entrypoint(tmp_path / "jobs", "worker", VQ_WORKER_CONCURRENCY="4")
    assert commands == [
        [
            "celery",
            "-A",
            "jobs.celery_app:app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "4",
            "-Q",
            "visionqueue,maintenance",
            "--loglevel",
            "INFO",
        ]
    ]
    commands = run_entrypoint(tmp_path / "hooks", "webhooks", VQ_WEBHOOK_CONCURRENCY="3")
    assert commands == [
        [
            "celery",
            "-A",
            "jobs.celery_app:app",
            "worker",
            "-n",
            "webhooks@%h",
            "--pool",
            "threads",
            "--concurrency",
            "3",
            "-Q",
            "webhooks,maintenance",
            "--loglevel",
            "INFO",
        ]
    ]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (
            "flower",
            ["celery", "-A", "jobs.celery_app:app", "flower", "--address=0.0.0.0", "--port=5555"],
        ),
        ("migrate", ["python", "-m", "persistence", "upgrade"]),
    ],
)
def test_other_roles(tmp_path: Path, role: str, expected: list[str]) -> None:
    assert run_entrypoint(tmp_path, role) == [expected]


def test_unknown_role_is_executed_as_a_command(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path, "python", "-c", "pass") == [["python", "-c", "pass"]]
