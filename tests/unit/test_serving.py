"""Serving several models: VQ_MODELS, promotions, load-then-swap slots, the memory check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_store.importer import import_classifier
from model_store.promotions import promote, promoted_tags, read_record
from model_store.serving import (
    ModelSlot,
    PromotionWatcher,
    check_memory,
    served_specs,
    tag_id,
)
from model_store.weights import WeightsError
from tests.support import checkpoints
from visionqueue.dataplane import rows as answer_rows


def test_vq_models_parsing() -> None:
    specs = served_specs(["pets", "tools:abc123", "my-model.v2"], "resnet18", "")
    assert [(s.name, s.tag, s.api) for s in specs] == [
        ("pets", "pets:latest", "classify"),
        ("tools", "tools:abc123", "classify_tools"),
        ("my-model.v2", "my-model.v2:latest", "classify_my_model_v2"),
    ]
    assert [s.tag for s in served_specs([], "resnet18", "")] == ["resnet18:latest"]
    assert [s.tag for s in served_specs([], "resnet18", "resnet18:x1")] == ["resnet18:x1"]
    with pytest.raises(ValueError, match="twice"):
        served_specs(["pets", "pets:abc"], "resnet18", "")
    with pytest.raises(ValueError, match="twice"):
        served_specs(["x", "a-b", "a.b"], "resnet18", "")  # same API name
    with pytest.raises(ValueError, match="not NAME or NAME:TAG"):
        served_specs(["../x"], "resnet18", "")


def test_memory_check_names_every_model(tmp_path: Path) -> None:
    for name, size in (("big", 50), ("small", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w.bin").write_bytes(b"\0" * size * 1024 * 1024)
    paths = {"big": str(tmp_path / "big"), "small": str(tmp_path / "small")}
    estimates = check_memory(paths, workers=1, limit_mb=1024)
    assert estimates["big"] > estimates["small"]
    with pytest.raises(ValueError, match=r"big ~196 MiB, small ~98 MiB, x 2 classifier"):
        check_memory(paths, workers=2, limit_mb=400)


@pytest.fixture(scope="module")
def tools_versions(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("tools")
    tags = []
    for seed in (21, 22):
        sub = folder / str(seed)
        sub.mkdir()
        weights, labels, _ = checkpoints.mobilenet_tools(sub, seed=seed)
        tags.append(
            import_classifier("s-tools", weights, arch="mobilenet_v3_small", labels=labels).tag
        )
    return tags


def test_promotion_record_is_written_whole(tmp_path: Path, tools_versions: list[str]) -> None:
    record = tmp_path / "promotions.json"
    first, second = tools_versions
    entry = promote(second, record)
    assert entry == {"tag": second, "previous": None, "sequence": 1}
    assert promote(first, record)["previous"] == second  # rolling back: the same operation
    assert promoted_tags(record) == {"s-tools": first}
    assert read_record(record)["sequence"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["promotions.json", "promotions.lock"]
    with pytest.raises(WeightsError, match="no model 's-tools:nope'"):
        promote("s-tools:nope", record)
    with pytest.raises(WeightsError, match="NAME:TAG"):
        promote("s-tools", record)


def _loader(tag: str) -> Any:
    from model_store.inference import load_classifier
    from model_store.store import get_model

    stored = get_model(tag)
    return load_classifier(
        stored.path,
        stored.tag,
        stored.weights_origin,
        tuple(stored.metadata["labels"]),
        device="cpu",
        backend="eager",
        metadata=stored.metadata,
    )


def test_watcher_swaps_in_the_promoted_version(tmp_path: Path, tools_versions: list[str]) -> None:
    first, second = tools_versions
    record = tmp_path / "promotions.json"
    slot = ModelSlot("s-tools", _loader)
    slot.load(first)
    crops = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    before = answer_rows.pack(*slot.run(crops))  # the wire rows the classifier answers
    assert before.shape == (3, 3 + 2)
    assert set(before[:, -1]) == {tag_id(first)}
    watcher = PromotionWatcher({"s-tools": slot}, record, poll_s=60)
    watcher.check_once()  # no record yet: nothing changes
    assert slot.tag == first
    promote(second, record)
    watcher.check_once()
    after = answer_rows.pack(*slot.run(crops))
    assert slot.tag == second and set(after[:, -1]) == {tag_id(second)}
    assert not np.allclose(before[:, :3], after[:, :3])  # really the other weights
    described = slot.describe()
    assert described["tag"] == second
    assert set(described["versions"]) == {tag_id(first), tag_id(second)}
    assert described["memory"]["resident_bytes"] > 1_000_000


def test_readme_model_commands_parse() -> None:
    """The README's 'Serve your own model' commands are valid ``visionqueue`` command lines."""
    import re
    import shlex

    from visionqueue.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Serve your own model", 1)[1].split("\n## ", 1)[0]
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)
        for line in block.splitlines()
        if line.startswith(".venv/bin/visionqueue ")
    ]
    assert len(commands) == 6, commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])  # SystemExit on a bad line
        assert args.command in ("import-model", "models")
