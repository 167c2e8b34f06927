"""CI runs every test: `.ci/run` calls `make test`, which deselects nothing; the fast loop does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_dry_run(target: str) -> str:
    # under `make test` (CI) the outer make's MAKELEVEL/MAKEFLAGS would make this one print
    # "Entering directory" lines; ask for the recipe as a top-level make would show it
    env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_ci_runs_make_test_and_make_test_runs_everything() -> None:
    assert "make test\n" in (ROOT / ".ci" / "run").read_text()
    assert make_dry_run("test") == "scripts/test"
    assert 'pytest --durations=25 "$@"' in (ROOT / "scripts" / "test").read_text()


def test_the_fast_loop_skips_slow_and_server_tests() -> None:
    assert make_dry_run("test-fast") == 'scripts/test -m "not slow" tests/unit'
