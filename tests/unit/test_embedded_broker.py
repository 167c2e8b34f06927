"""The embedded (filesystem) broker hands a message to a waiting consumer within its poll interval."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from jobs.celery_app import celery_config, ensure_broker_dirs
from visionqueue.core.settings import Settings


def pick_up_delays(settings: Settings, messages: int) -> list[float]:
    """Publish ``messages`` to an idle consumer, one at a time; return each one's delay (s)."""
    ensure_broker_dirs(settings)
    conf = celery_config(settings)
    # kombu remembers bindings per process: a fresh name makes this test's binding file
    name = f"pickup-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    delays: list[float] = []
    with Connection(conf["broker_url"], transport_options=conf["broker_transport_options"]) as conn:
        received = threading.Event()
        sent_at: list[float] = []

        def on_message(body: object, message: object) -> None:
            delays.append(time.monotonic() - sent_at[-1])
            message.ack()  # type: ignore[attr-defined]
            received.set()

        def publish_later() -> None:
            with Connection(
                conf["broker_url"], transport_options=conf["broker_transport_options"]
            ) as pub:
                producer = pub.Producer()
                for n in range(messages):
                    received.clear()
                    time.sleep(0.37)  # the consumer is asleep between two polls by now
                    sent_at.append(time.monotonic())
                    producer.publish(
                        {"n": n}, exchange=queue.exchange, routing_key=name, declare=[queue]
                    )
                    received.wait(10)

        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            publisher = threading.Thread(target=publish_later)
            publisher.start()
            deadline = time.monotonic() + 10 * messages
            while len(delays) < messages and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    continue
            publisher.join()
    return delays


def test_a_lone_message_is_picked_up_within_the_poll_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VQ_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.broker.poll_interval_s == 0.05
    delays = pick_up_delays(settings, 5)
    assert len(delays) == 5
    # kombu's own default (1 s) would make these 0-1 s; the interval bounds them (with slack
    # for a loaded machine)
    assert max(delays) < 0.35, delays


def test_the_poll_interval_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VQ_BROKER_POLL_INTERVAL_S", "0.6")
    delays = pick_up_delays(Settings(), 3)
    # published 0.37 s into a 0.6 s sleep: some waits are long, as the setting says
    assert max(delays) > 0.1, delays


def test_the_broker_folders_are_ours_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    ensure_broker_dirs(settings)
    folders = [settings.broker_dir, *settings.broker_dir.iterdir()]
    assert len(folders) == 4
    assert {f.stat().st_mode & 0o777 for f in folders} == {0o700}
