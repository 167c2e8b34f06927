"""bentofile.yaml: BentoML accepts it, and it ships the service, model and pinned CPU stack."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BENTOFILE = ROOT / "bentofile.yaml"
REQUIREMENTS = ROOT / "deploy" / "requirements-bento.txt"
PYPROJECT = ROOT / "pyproject.toml"


def bentofile() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BENTOFILE.read_text(encoding="utf-8"))
    return data


def pinned_requirements() -> tuple[list[str], dict[str, Requirement]]:
    """Return the option lines and the requirements of deploy/requirements-bento.txt."""
    options: list[str] = []
    requirements: dict[str, Requirement] = {}
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        req = Requirement(line)
        requirements[req.name.lower().replace("_", "-")] = req
    return options, requirements


def test_bentoml_accepts_the_build_config() -> None:
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with BENTOFILE.open(encoding="utf-8") as fh:
        config = BentoBuildConfig.from_yaml(fh).with_defaults()
    assert config.service == "service:VisionQueue"
    assert [spec.tag for spec in config.models] == ["resnet18:latest"]
    assert config.python.requirements_txt is not None
    assert (ROOT / config.python.requirements_txt).resolve() == REQUIREMENTS
    # Locking would need the network at build time; the file is pinned already.
    assert config.python.lock_packages is False
    assert config.docker.python_version == "3.11"


def test_bento_includes_every_package() -> None:
    include = bentofile()["include"]
    assert "service.py" in include
    for package in ("visionqueue", "model_store", "jobs", "persistence"):
        assert f"{package}/**/*.py" in include, package
        assert (ROOT / package).is_dir(), package


def test_bento_defaults_to_production_on_all_interfaces() -> None:
    envs = {env["name"]: env for env in bentofile()["envs"]}
    assert envs["VQ_ENV"]["value"] == "production"
    assert envs["VQ_HOST"]["value"] == "0.0.0.0"
    assert envs["UV_INDEX_STRATEGY"] == {
        "name": "UV_INDEX_STRATEGY",
        "value": "unsafe-best-match",
        "stage": "build",
    }


def test_requirements_pin_torch_from_the_default_index() -> None:
    options, requirements = pinned_requirements()
    assert options == []  # a wheel index is the user's to add (see the file's header)
    assert str(requirements["torch"].specifier) == "==2.14.1"
    assert str(requirements["torchvision"].specifier) == "==0.29.1"


def test_requirements_pin_every_runtime_dependency_within_pyproject() -> None:
    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    _, pinned = pinned_requirements()
    for spec in declared:
        want = Requirement(spec)
        name = want.name.lower().replace("_", "-")
        assert name in pinned, f"{name} missing from {REQUIREMENTS.name}"
        [pin] = list(pinned[name].specifier)
        assert pin.operator == "==", f"{name} is not pinned"
        assert want.specifier.contains(pin.version, prereleases=True), (
            f"{name}=={pin.version} violates pyproject's {want.specifier}"
        )
        assert want.extras <= pinned[name].extras, f"{name} lost extras {want.extras}"
