"""Promotions in the database: one record for every classifier replica of a deployment."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from model_store.weights import WeightsError
from persistence.db import dispose_engines
from persistence.migrate import upgrade_database
from persistence.promotions_repo import DatabasePromotions
from tests.support.rows import migrated_sqlite
from visionqueue.core.errors import DatabaseUnavailable


def _accept(current: str | None) -> None:
    return None


def test_a_promotion_is_read_back_by_another_reader(tmp_path: Path) -> None:
    with migrated_sqlite(tmp_path) as engine:
        writer, reader = DatabasePromotions(str(engine.url)), DatabasePromotions(str(engine.url))
        assert reader.entries() == {} and reader.stamp() == 0
        first = writer.record("pets", "pets:v1", _accept)
        assert first == {"tag": "pets:v1", "previous": None, "sequence": 1}
        stamp = reader.stamp()
        writer.record("pets", "pets:v2", _accept)
        assert reader.stamp() != stamp  # what a classifier replica polls
        writer.record("fruit", "fruit:a", _accept)
        assert reader.entries() == {
            "pets": {"tag": "pets:v2", "previous": "pets:v1", "sequence": 2},
            "fruit": {"tag": "fruit:a", "previous": None, "sequence": 3},
        }
        # rolling back is the same operation
        assert writer.record("pets", "pets:v1", _accept)["previous"] == "pets:v2"


def test_a_refused_promotion_changes_nothing(tmp_path: Path) -> None:
    with migrated_sqlite(tmp_path) as engine:
        record = DatabasePromotions(str(engine.url))
        record.record("pets", "pets:v1", _accept)
        seen: list[str | None] = []

        def refuse(current: str | None) -> None:
            seen.append(current)
            raise WeightsError("pets:odd takes [3, 96, 96] inputs")

        with pytest.raises(WeightsError):
            record.record("pets", "pets:odd", refuse)
        assert seen == ["pets:v1"]  # the check saw the current tag
        assert record.entries()["pets"]["tag"] == "pets:v1"
        assert record.stamp() == 1


def test_concurrent_promotions_take_turns(tmp_path: Path) -> None:
    """Each promotion sees the one before it as previous: none is lost or read twice."""
    with migrated_sqlite(tmp_path) as engine:
        url = str(engine.url)
        errors: list[BaseException] = []

        def promote(index: int) -> None:
            try:
                DatabasePromotions(url).record("pets", f"pets:v{index}", _accept)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=promote, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        entry = DatabasePromotions(url).entries()["pets"]
        assert entry["sequence"] == 8


def test_the_upgrade_keeps_a_file_record_of_an_earlier_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "model-promotions.json").write_text(
        json.dumps(
            {
                "sequence": 4,
                "models": {"pets": {"tag": "pets:v2", "previous": "pets:v1", "sequence": 4}},
            }
        )
    )
    monkeypatch.setenv("VQ_DATA_DIR", str(data))
    url = f"sqlite:///{tmp_path / 'vq.db'}"
    try:
        upgrade_database(url)
        record = DatabasePromotions(url)
        assert record.entries() == {
            "pets": {"tag": "pets:v2", "previous": "pets:v1", "sequence": 4}
        }
        assert record.record("pets", "pets:v3", _accept)["sequence"] == 5
    finally:
        dispose_engines(url)


def test_an_unmigrated_database_has_no_promotion_and_refuses_one(tmp_path: Path) -> None:
    """A classifier on a schema of an earlier release serves VQ_MODELS; promote names the fix."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    try:
        record = DatabasePromotions(url)
        assert record.entries() == {} and record.stamp() is None
        assert not (tmp_path / "empty.db").exists()  # reading created no database
        engine = create_engine(url)
        with engine.begin() as connection:  # a database of an earlier schema
            connection.execute(text("CREATE TABLE jobs (id TEXT)"))
        engine.dispose()
        assert record.entries() == {} and record.stamp() is None
        with pytest.raises(DatabaseUnavailable, match="python -m persistence upgrade"):
            record.record("pets", "pets:v1", _accept)
    finally:
        dispose_engines(url)
