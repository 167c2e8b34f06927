"""The promotion record: which stored version each model name serves, switched without downtime.

``promote("pets:v2", record)`` writes one entry to a record. The deployed record is the
database (``persistence.promotions_repo.DatabasePromotions``, table ``model_promotions``):
every classifier replica of a deployment reads the same one, so one promote switches them
all. ``FileRecord`` keeps the same record in a JSON file (a single host without a database,
and tests). Every classifier worker watches the record (``model_store.serving``): it loads the
promoted version next to the running one, warms it up, then swaps it in between two batches.
A batch runs wholly on one version, every answer names the tag that computed it, and once the
swap is done no batch runs on the old version. Rolling back is promoting the previous tag again.

A promoted version must take the same input size as the one it replaces (the front crops
images for the version it expects; a batch cannot mix sizes): changing it needs a restart.
A record entry wins over ``VQ_MODELS`` for its name, also across restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from model_store.weights import WeightsError

RECORD_FILE = "model-promotions.json"


class PromotionRecord(Protocol):
    """Where promotions are kept: read them, notice a change, write one."""

    def entries(self) -> dict[str, dict[str, Any]]:
        """Return name -> ``{"tag", "previous", "sequence"}``."""
        ...

    def stamp(self) -> object:
        """Return a value that changes whenever a promotion is recorded."""
        ...

    def record(self, name: str, tag: str, check: Callable[[str | None], None]) -> dict[str, Any]:
        """Call ``check(current tag)``, then record ``tag`` for ``name``; return the entry."""
        ...


def record_path() -> Path:
    """The file record of this host (``VQ_DATA_DIR/model-promotions.json``)."""
    from visionqueue.core.settings import get_settings

    return get_settings().data_dir.resolve() / RECORD_FILE


def read_record(path: Path | None = None) -> dict[str, Any]:
    """Return a file record (``{"models": {name: {"tag", "previous", "sequence"}}}``)."""
    path = path or record_path()
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {"models": {}, "sequence": 0}
    except (OSError, ValueError):
        return {"models": {}, "sequence": 0}  # a torn read cannot happen (os.replace); be safe
    return record if isinstance(record.get("models"), dict) else {"models": {}, "sequence": 0}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class FileRecord:
    """The record in one JSON file, replaced atomically under a lock (one host)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(read_record(self.path)["models"])

    def stamp(self) -> object:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def record(self, name: str, tag: str, check: Callable[[str | None], None]) -> dict[str, Any]:
        with _locked(self.path):
            record = read_record(self.path)
            current = record["models"].get(name, {}).get("tag")
            check(current)
            record["sequence"] = int(record.get("sequence", 0)) + 1
            entry = {"tag": tag, "previous": current, "sequence": record["sequence"]}
            record["models"][name] = entry
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, self.path)  # atomic: a watcher never reads half a record
        return entry


def as_record(source: PromotionRecord | Path) -> PromotionRecord:
    """A record from a record or a file path."""
    return FileRecord(source) if isinstance(source, Path) else source


def promoted_tags(source: PromotionRecord | Path) -> dict[str, str]:
    """Return name -> promoted tag."""
    return {name: str(e["tag"]) for name, e in as_record(source).entries().items()}


def _input_size(metadata: dict[str, Any]) -> list[int]:
    return list(metadata.get("input_size", [3, 224, 224]))


def check_agreement(stored: Any, minimum: float, force: bool) -> None:
    """Refuse an int8 version whose stored top-1 agreement is below ``minimum`` (unless forced)."""
    from model_store.quantize import top1_agreement

    top1 = top1_agreement(stored.metadata)
    if top1 is not None and top1 < minimum and not force:
        raise WeightsError(
            f"{stored.tag} is an int8 version whose top-1 agreement with its fp32 source is "
            f"{top1:.2%}, below VQ_INT8_MIN_AGREEMENT ({minimum:.2%}); promote it with "
            "--force to serve it anyway"
        )


def promote(
    tag: str,
    source: PromotionRecord | Path,
    force: bool = False,
    min_agreement: float | None = None,
) -> dict[str, Any]:
    """Make ``tag`` the served version of its name; return the record entry."""
    from model_store.store import get_model, list_versions
    from visionqueue.core.settings import get_settings

    if ":" not in tag:
        raise WeightsError(f"promote takes NAME:TAG, not {tag!r} (see `models list`)")
    stored = get_model(tag)  # refuses unknown tags; NAME:latest resolves to a version
    if min_agreement is None:
        min_agreement = get_settings().model.int8_min_agreement
    check_agreement(stored, min_agreement, force)

    def same_input_size(current: str | None) -> None:
        others = [v for v in list_versions(stored.name) if v.tag != stored.tag]
        reference = next((v for v in others if v.tag == current), others[0] if others else None)
        if reference is not None and _input_size(reference.metadata) != _input_size(
            stored.metadata
        ):
            raise WeightsError(
                f"{stored.tag} takes {_input_size(stored.metadata)} inputs but {reference.tag} "
                f"takes {_input_size(reference.metadata)}: a live switch keeps the input size; "
                "serve it with VQ_MODELS and a restart instead"
            )

    return as_record(source).record(stored.name, stored.tag, same_input_size)
