"""Missing test prerequisites: a skip on a developer's machine, a failure in CI.

A test that needs a tool the machine may lack (a Prometheus binary, ``initdb``) calls
``require``. Locally a missing tool skips the test, saying how to install it; under
``CI=true`` (what CI services set, and ``.ci/run`` sets) or ``TEST_STRICT=1`` it fails, so
a CI machine that lost a tool cannot turn a suite of checks into a suite of skips.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

TRUE = ("1", "true", "yes")


def strict() -> bool:
    """Tell whether a missing prerequisite must fail the test (CI, or TEST_STRICT=1)."""
    return (
        os.environ.get("CI", "").lower() in TRUE
        or os.environ.get("TEST_STRICT", "").lower() in TRUE
    )


def missing(what: str, how: str) -> NoReturn:
    """Skip the test (fail it when strict): ``what`` is absent; ``how`` installs it."""
    message = f"{what} is not available ({how})"
    if strict():
        pytest.fail(f"{message}; CI=true or TEST_STRICT=1 makes this a failure", pytrace=False)
    pytest.skip(message)


def require_binary(name: str, how: str, *candidates: str) -> str:
    """Return the path of executable ``name`` (PATH first, then ``candidates``)."""
    found = shutil.which(name) or next((c for c in candidates if shutil.which(c)), None)
    if found is None:
        missing(f"the {name} executable", how)
    return found


def require_module(name: str, how: str) -> ModuleType:
    """Import and return module ``name``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name}", how)
