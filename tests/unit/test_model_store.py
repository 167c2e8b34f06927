"""Model import: origins are recorded, checkpoints verified, bad checkpoints refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from model_store.store import ensure_model, find_model, import_model
from model_store.weights import WeightsError, file_sha256


def test_random_import_records_origin_labels_and_preprocessing(stored_model) -> None:  # type: ignore[no-untyped-def]
    import bentoml

    model = bentoml.models.get(stored_model.tag)
    meta = model.info.metadata
    assert meta["weights_origin"] == "random-init:seed=0"
    assert meta["architecture"] == "torchvision.models.resnet18"
    assert len(meta["labels"]) == 1000 and meta["labels"][1] == "goldfish"
    assert meta["preprocessing"]["resize"] == 256
    assert stored_model.demo


def test_ensure_model_reuses_the_stored_version(stored_model) -> None:  # type: ignore[no-untyped-def]
    assert ensure_model("random", seed=0).tag == stored_model.tag


def test_checkpoint_import_names_its_sha256(tmp_path: Path) -> None:
    torch.manual_seed(42)
    ckpt = tmp_path / "resnet18.pt"
    torch.save({"state_dict": resnet18(weights=None).state_dict()}, ckpt)
    stored = import_model(str(ckpt), name="ckpt-test")
    assert stored.weights_origin == f"file:{file_sha256(ckpt)}"
    assert not stored.demo
    assert find_model(stored.weights_origin, name="ckpt-test") is not None


def test_mismatched_checkpoint_fails_clearly(tmp_path: Path) -> None:
    ckpt = tmp_path / "ten-classes.pt"
    torch.save(resnet18(weights=None, num_classes=10).state_dict(), ckpt)
    with pytest.raises(WeightsError, match="does not match ResNet18"):
        import_model(str(ckpt), name="bad-test")


def test_unreadable_checkpoint_fails_clearly(tmp_path: Path) -> None:
    ckpt = tmp_path / "garbage.pt"
    ckpt.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="unreadable"):
        import_model(str(ckpt), name="bad-test")


def test_missing_checkpoint_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        ensure_model(str(tmp_path / "nope.pt"))


def test_offline_imagenet_falls_back_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    import model_store.store as store

    def offline(spec: str, seed: int = 0):  # type: ignore[no-untyped-def]
        if spec == "imagenet1k_v1":
            raise WeightsError("could not download")
        return real(spec, seed)

    real = store.build_state_dict
    monkeypatch.setattr(store, "build_state_dict", offline)
    with pytest.raises(WeightsError):
        ensure_model("imagenet1k_v1", name="offline-test")
    fallback = ensure_model("imagenet1k_v1", name="offline-test", allow_fallback=True)
    assert fallback.weights_origin == "random-init:seed=0"
