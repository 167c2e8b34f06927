"""No package-registry host is written into the project: each tool uses its own default index.

Users who need another index set a variable (``TORCH_INDEX_URL``, ``PIP_INDEX_URL``, ...);
the project names such indexes in words. The host names below are assembled from parts so
that this file does not match itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOT = r"\."
REGISTRY_HOSTS = [
    DOT.join(parts)
    for parts in (
        ("pypi", "org"),
        ("pythonhosted", "org"),
        ("download", "pytorch"),
        ("pytorch", "org/whl"),  # PyTorch's wheel indexes (its documentation is fine)
        ("deb", "debian", "org"),
        ("security", "debian", "org"),
        ("archive", "ubuntu", "com"),
        ("npmjs", "org"),
        ("npmjs", "com"),
        ("yarnpkg", "com"),
        ("anaconda", "org"),
        ("conda", "anaconda"),
        ("crates", "io"),
        ("rubygems", "org"),
        ("proxy", "golang", "org"),
        ("repo1", "maven"),
        ("repo", "maven", "apache"),
    )
]
PATTERN = re.compile("|".join(REGISTRY_HOSTS), re.IGNORECASE)


def tracked_files() -> list[Path]:
    """Every file git tracks (or, outside a checkout, every file but build and VCS output)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "node_modules", "__pycache__", ".vq-data"}
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_the_pattern_catches_a_host() -> None:
    host = ".".join(("files", "pythonhosted", "org"))
    assert PATTERN.search(f"pip install --index-url https://{host}/simple")
    assert not PATTERN.search("PyTorch's CPU wheel index")


def test_no_registry_host_in_the_tracked_tree() -> None:
    files = tracked_files()
    assert any(p.name == "Containerfile" for p in files)
    found = []
    for path in files:
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        text = path.read_bytes().decode("utf-8", errors="ignore")
        for number, line in enumerate(text.splitlines(), start=1):
            if PATTERN.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "package-registry hosts in the project:\n" + "\n".join(found)
