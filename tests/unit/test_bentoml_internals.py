"""BentoML internals are imported in one module: an upgrade reads one list."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = ("bentoml._internal", "_bentoml_impl", "_bentoml_sdk")
THE_MODULE = ROOT / "visionqueue" / "bento" / "internals.py"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def product_files() -> list[Path]:
    files = [ROOT / "service.py"]
    for package in ("visionqueue", "model_store", "jobs", "persistence"):
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def test_only_the_internals_module_imports_bentomls_internals() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.startswith(INTERNAL)
        )
        for path in product_files()
        if path != THE_MODULE
    }
    assert {path: found for path, found in offenders.items() if found} == {}
    assert any(m.startswith(INTERNAL) for m in imported_modules(THE_MODULE))
