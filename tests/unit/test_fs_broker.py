"""The embedded broker never hands a consumer a message that is still being written."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection

from jobs.celery_app import celery_config
from jobs.fs_broker import PATH
from visionqueue.core.settings import Settings

MESSAGES = 60
BLOB = "x" * 512 * 1024  # large enough that writing a message takes a while


def channel(folder: Path, transport: str) -> Any:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    options["control_folder"] = str(folder / "control")
    return Connection("filesystem://", transport=transport, transport_options=options)


def race(folder: Path, transport: str) -> list[Any]:
    """Publish large messages while a consumer polls without pause; return what it read."""
    received: list[Any] = []
    with channel(folder, transport) as pub, channel(folder, transport) as sub:
        producer, consumer = pub.default_channel, sub.default_channel

        def publish() -> None:
            for n in range(MESSAGES):
                producer._put("q", {"n": n, "blob": BLOB})

        thread = threading.Thread(target=publish)
        thread.start()
        deadline = time.monotonic() + 60
        while len(received) < MESSAGES and time.monotonic() < deadline:
            try:
                received.append(consumer._get("q"))
            except Empty:
                continue
        thread.join()
    return received


def test_a_consumer_polling_nonstop_reads_every_message_whole(tmp_path: Path) -> None:
    received = race(tmp_path, PATH)
    assert sorted(m["n"] for m in received) == list(range(MESSAGES))
    assert all(m["blob"] == BLOB for m in received)
    assert not list(tmp_path.iterdir())  # nothing left behind, no stray partial file


def test_celery_uses_it_for_the_embedded_broker(tmp_path: Path) -> None:
    embedded = celery_config(Settings(data_dir=tmp_path))
    assert embedded["broker_url"].startswith("filesystem://")
    assert embedded["broker_transport"] == PATH
    redis = celery_config(Settings.model_validate({"broker": {"url": "redis://127.0.0.1:6379/0"}}))
    assert redis.get("broker_transport") is None


def test_a_broadcast_table_is_never_read_half_made(tmp_path: Path) -> None:
    """Workers bind to the broadcast exchange while Flower reads it: no reader sees an empty table."""
    errors: list[BaseException] = []
    rounds = 200
    with channel(tmp_path, PATH) as conn_a, channel(tmp_path, PATH) as conn_b:
        binder, reader = conn_a.default_channel, conn_b.default_channel
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                for n in range(rounds):
                    try:
                        reader.get_table(f"x{n}")
                    except BaseException as exc:  # every failure is the finding
                        errors.append(exc)

        thread = threading.Thread(target=read)
        thread.start()
        for n in range(rounds):
            binder._queue_bind(f"x{n}", "", "", f"q{n}")
            binder._queue_bind(f"x{n}", "", "", f"r{n}")
        stop.set()
        thread.join()
        tables = [binder.get_table(f"x{n}") for n in range(rounds)]
    assert not errors, errors[:3]
    assert all(sorted(q.queue for q in t) == [f"q{n}", f"r{n}"] for n, t in enumerate(tables))
    assert not list((tmp_path / "control").glob("*.part"))


def test_only_job_messages_are_named_after_their_job(tmp_path: Path) -> None:
    from jobs.fs_broker import job_headers, queued_job_ids

    with channel(tmp_path, PATH) as conn:
        conn.default_channel._put("q", {"headers": job_headers("0f3c-a1"), "body": ""})
        conn.default_channel._put("q", {"headers": {}, "body": ""})  # an event, a sweep
        conn.default_channel._put("q", {"headers": {"vq_job_id": "../x"}, "body": ""})
    assert queued_job_ids(tmp_path) == {"0f3c-a1"}
    assert len(list(tmp_path.glob("*.q.msg"))) == 3
