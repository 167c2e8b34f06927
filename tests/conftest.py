"""Session-wide test setup: an isolated BentoML home, a seeded demo model, a live server."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="vq-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    # Tests must not pick up a developer's VQ_* settings or their BentoML model store.
    for key in [k for k in os.environ if k.startswith("VQ_")]:
        del os.environ[key]
    os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get("VQTEST_KEEP_LOGS"):  # servers' and workers' logs, for a post-mortem
        print(f"\nVQTEST_KEEP_LOGS: the session's files are in {_SESSION_DIR}")
        return
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def stored_model():  # type: ignore[no-untyped-def]
    """The seeded random-init ResNet18 every test serves (pretrained weights are offline)."""
    from model_store.store import ensure_model

    return ensure_model("random", seed=0)


@pytest.fixture(scope="session")
def server_env(stored_model, session_dir: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "BENTOML_HOME": os.environ["BENTOML_HOME"],
        "VQ_MODEL_TAG": stored_model.tag,
        "VQ_WEIGHTS": "random",
        "VQ_DATA_DIR": str(session_dir / "data"),
    }


@pytest.fixture(scope="session")
def bento_url(server_env: dict[str, str], session_dir: Path) -> Iterator[str]:
    """URL of a real ``bentoml serve service:VisionQueue`` process."""
    from tests.support.servers import bento_server

    with bento_server(server_env, session_dir / "bento.log") as url:
        yield url


@pytest.fixture(scope="session")
def stack(server_env: dict[str, str], session_dir: Path):  # type: ignore[no-untyped-def]
    """Bento + Postgres + Redis + S3 server (no workers yet: tests start and kill them)."""
    from tests.support.stack import production_stack

    with production_stack(server_env, session_dir / "stack") as running:
        yield running


@pytest.fixture(scope="module")
def worker(stack):  # type: ignore[no-untyped-def]
    """A real ``celery worker`` on the stack for this module's tests, stopped after them."""
    with stack.worker() as proc:
        yield proc
