"""Batch chunks on SQLite and a real PostgreSQL: fenced leases, exclusive claims, one line
per key, resumable planning in bounded pages."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, update

from jobs.batches.plan import plan_batch
from jobs.lease_keeper import LeaseKeeper
from jobs.resources import Resources
from persistence import batches_repo
from persistence.db import session_scope
from persistence.local_images import LocalImageStore
from persistence.models import Batch, BatchChunk, utcnow
from tests.integration.batches_factories import migrated_engine, new_batch
from visionqueue.core.errors import InvalidCursor
from visionqueue.core.settings import BatchSettings, DatabaseSettings, Settings

pytestmark = pytest.mark.integration
LEASE = 5.0


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(request.param, tmp_path) as engine:
        yield engine


def _line(key: str, who: str) -> str:
    return json.dumps({"key": key, "predictions": [], "model": {"by": who}, "error": None})


def test_a_stalled_workers_late_write_is_refused(engine: Engine) -> None:
    keys = ["a.jpg", "b.jpg", "c.jpg"]
    batch_id = new_batch(engine, [keys])
    with session_scope(engine) as session:
        stalled = batches_repo.claim_chunk(session, batch_id, "stalled", LEASE)
    assert stalled is not None and stalled.keys == keys
    # nobody may take it while its lease is live
    with session_scope(engine) as session:
        assert batches_repo.claim_chunk(session, batch_id, "other", LEASE) is None
    later = utcnow() + timedelta(seconds=LEASE + 1)  # the stalled worker stopped renewing
    with session_scope(engine) as session:
        fresh = batches_repo.claim_chunk(session, batch_id, "fresh", LEASE, now=later)
    assert fresh is not None and fresh.fence == stalled.fence + 1
    with session_scope(engine) as session:
        assert not batches_repo.renew_chunk(session, stalled, LEASE)  # fenced: no renewal
    late = "\n".join(_line(k, "stalled") for k in keys)
    # it wakes up while the chunk's new holder is still working on it: refused
    with session_scope(engine) as session:
        assert not batches_repo.complete_chunk(session, stalled, late, 3, 0, "m:1")
    lines = "\n".join(_line(k, "fresh") for k in keys)
    with session_scope(engine) as session:
        assert batches_repo.complete_chunk(session, fresh, lines, 3, 0, "m:1")
    with session_scope(engine) as session:  # and after it finished: refused too
        assert not batches_repo.complete_chunk(session, stalled, late, 3, 0, "m:1")
    stored = [json.loads(line) for line in stored_lines(engine, batch_id)]
    assert [x["key"] for x in stored] == keys
    assert {x["model"]["by"] for x in stored} == {"fresh"}
    with session_scope(engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
        assert batch is not None
        assert (batch.status, batch.done, batch.failed, batch.total) == ("completed", 3, 0, 3)


def stored_lines(engine: Engine, batch_id: str) -> list[str]:
    return [
        line for text in batches_repo.iter_lines(engine, batch_id) for line in text.splitlines()
    ]


def test_concurrent_claimers_take_each_chunk_once(engine: Engine) -> None:
    chunks = [[f"{c}-{i}" for i in range(2)] for c in range(24)]
    batch_id = new_batch(engine, chunks)
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while True:
            with session_scope(engine) as session:
                chunk = batches_repo.claim_chunk(session, batch_id, name, LEASE)
            if chunk is None:
                return
            with lock:
                taken.append((name, chunk.seq))
            body = "\n".join(_line(k, name) for k in chunk.keys)
            with session_scope(engine) as session:
                assert batches_repo.complete_chunk(session, chunk, body, len(chunk.keys), 0, None)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(seq for _, seq in taken) == list(range(24))
    assert len({name for name, _ in taken}) > 1, "one claimer took everything: nothing shown"
    keys = [json.loads(line)["key"] for line in stored_lines(engine, batch_id)]
    assert keys == [k for chunk in chunks for k in chunk]
    with session_scope(engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
        assert batch is not None and (batch.status, batch.done) == ("completed", 48)


def _resources(engine: Engine, tmp_path: Path, root: Path, chunk_size: int) -> Resources:
    settings = Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(url=str(engine.url.render_as_string(hide_password=False))),
        batch=BatchSettings(local_roots=[str(root)], chunk_size=chunk_size),
    )
    store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:3000", b"k")
    return Resources(settings, engine, store, httpx.Client(), LeaseKeeper(engine, LEASE))


def test_planning_resumes_after_a_crash_and_lists_each_key_once(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    names = [f"d{d}/img{i:03d}.jpg" for d in range(3) for i in range(40)]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    batch_id = new_batch(engine, source=f"file://{root}", planned=False)
    res = _resources(engine, tmp_path, root, chunk_size=7)
    monkeypatch.setattr("jobs.batches.plan.CHUNKS_PER_PAGE", 4)

    class Crash(Exception):
        pass

    def die_after_two_pages(planned: int) -> None:
        if planned >= 8:
            raise Crash

    with pytest.raises(Crash):
        plan_batch(batch_id, res, on_page=die_after_two_pages)
    with session_scope(engine) as session:
        batch = batches_repo.get_batch_by_id(session, batch_id)
        assert batch is not None and not batch.planned and batch.planned_chunks == 8
    report = plan_batch(batch_id, res)
    assert report.finished
    planned: list[str] = []
    with session_scope(engine) as session:
        for seq in range(batches_repo.get_batch_by_id(session, batch_id).planned_chunks):  # type: ignore[union-attr]
            chunk = session.get(BatchChunk, (batch_id, seq))
            assert chunk is not None and chunk.size <= 7
            planned += chunk.keys.split("\n")
        batch = batches_repo.get_batch_by_id(session, batch_id)
        assert batch is not None and batch.total == len(names)
    assert planned == sorted(names)


def test_another_tenants_batch_is_absent(engine: Engine) -> None:
    batch_id = new_batch(engine, [["a"]], owner="tenant-a")
    with session_scope(engine) as session:
        assert batches_repo.get_batch(session, batch_id, "tenant-b") is None
        assert batches_repo.cancel_batch(session, batch_id, "tenant-b") is None
        assert batches_repo.list_batches(session, "tenant-b") == ([], None)
        assert batches_repo.get_batch(session, batch_id, "tenant-a") is not None


def test_the_list_pages_through_every_batch_newest_first_by_cursor(engine: Engine) -> None:
    mine = [new_batch(engine, [["a"]], owner="tenant-a") for _ in range(7)]
    theirs = new_batch(engine, [["a"]], owner="tenant-b")
    tied = utcnow()  # three batches created in the same instant: the id breaks the tie
    with session_scope(engine) as session:
        session.execute(update(Batch).where(Batch.id.in_(mine[2:5])).values(created_at=tied))
    with session_scope(engine) as session:
        expected = [
            b.id
            for b in session.scalars(
                select(Batch)
                .where(Batch.owner == "tenant-a")
                .order_by(Batch.created_at.desc(), Batch.id.desc())
            )
        ]
    assert sorted(expected) == sorted(mine)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        with session_scope(engine) as session:
            page, cursor = batches_repo.list_batches(session, "tenant-a", 3, cursor)
        pages.append([b.id for b in page])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == expected  # each once, newest first
    assert theirs not in expected
    with session_scope(engine) as session, pytest.raises(InvalidCursor):
        batches_repo.list_batches(session, "tenant-a", 3, "not-a-cursor")
