"""The front -> classifier crop socket: answers to their callers, failures as errors, never a hang."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.crop_servers import socket_folder, start_crop_server
from visionqueue.dataplane.crop_socket import (
    CropSocketClient,
    CropSocketError,
    CropSocketMissing,
    Infer,
    serve_crops,
    socket_paths,
)
from visionqueue.dataplane.socket_frames import REQUEST


@pytest.fixture
def sockets() -> Iterator[Path]:
    with socket_folder() as folder:
        yield folder


class Recorded:
    """The classifier's call metrics, recorded."""

    def __init__(self) -> None:
        self.in_progress = 0
        self.statuses: list[int] = []

    def started(self, api: str) -> None:
        self.in_progress += 1

    def finished(self, api: str, status: int, seconds: float) -> None:
        self.in_progress -= 1
        self.statuses.append(status)


class ErrorWithCode(Exception):
    """Stands for a BentoMLException: its ``error_code`` is the route's HTTP status."""

    class _Code:
        value = 503

    error_code = _Code()


async def echo(api: str, crops: np.ndarray, *_: object) -> np.ndarray:
    """Answer each crop with a row of its own pixel sum, plus a marker of the API."""
    if crops.max() == 255:
        raise ErrorWithCode("overloaded")
    if crops.max() == 254:
        raise ValueError("a bug")
    sums = crops.reshape(len(crops), -1).sum(axis=1, dtype=np.float32)
    return np.stack([sums, np.full_like(sums, len(api))], axis=1)


def crops_of(*values: int) -> np.ndarray:
    return np.stack([np.full((224, 224, 3), v, np.uint8) for v in values])


def test_each_caller_gets_its_own_rows_bit_for_bit(sockets: Path) -> None:
    metrics = Recorded()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 250, (n, 224, 224, 3), dtype=np.uint8) for n in (1, 3, 16, 2)]

    async def main() -> list[np.ndarray]:
        server = await serve_crops(sockets / "c-1.sock", frozenset({"classify"}), echo, metrics)
        async with server:
            client = CropSocketClient([sockets / "c-1.sock"])
            return await asyncio.gather(*(client.call("classify", b) for b in batches))

    answers = asyncio.run(main())
    for batch, got in zip(batches, answers, strict=True):
        assert np.array_equal(got, asyncio.run(echo("classify", batch)))
    assert metrics.statuses == [200] * 4 and metrics.in_progress == 0


def test_a_classifier_error_is_the_callers_error_and_the_connection_stays_usable(
    sockets: Path,
) -> None:
    metrics = Recorded()

    async def main() -> tuple[list[BaseException | np.ndarray], np.ndarray]:
        server = await serve_crops(sockets / "c-1.sock", frozenset({"classify"}), echo, metrics)
        async with server:
            client = CropSocketClient([sockets / "c-1.sock"])
            failed = await asyncio.gather(
                client.call("classify", crops_of(255)),
                client.call("classify", crops_of(254)),
                client.call("no_such_api", crops_of(1)),
                return_exceptions=True,
            )
            return failed, await client.call("classify", crops_of(1))

    failed, after = asyncio.run(main())
    assert [getattr(exc, "status", None) for exc in failed] == [503, 500, 404]
    assert all(isinstance(exc, CropSocketError) for exc in failed)
    assert after[0, 0] == 224 * 224 * 3
    assert sorted(metrics.statuses) == [200, 500, 503] and metrics.in_progress == 0


def test_a_dead_classifier_fails_its_calls_at_once_and_its_restart_is_reconnected(
    sockets: Path,
) -> None:
    path = sockets / "c-1.sock"
    worker = start_crop_server(path, 1)

    async def main() -> tuple[BaseException | None, BaseException | None, np.ndarray]:
        nonlocal worker
        client = CropSocketClient([path])
        assert (await client.call("classify", crops_of(1)))[0, 1] == 1
        hung = asyncio.create_task(client.call("classify", crops_of(0)))  # never answered
        await asyncio.sleep(0)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        # the caller's own deadline never fires: the broken connection ends the call
        lost = await asyncio.wait_for(asyncio.gather(hung, return_exceptions=True), 60)
        refused = await asyncio.gather(client.call("classify", crops_of(1)), return_exceptions=True)
        worker = start_crop_server(path, 2)  # BentoML's arbiter restarts a dead worker
        return lost[0], refused[0], await client.call("classify", crops_of(1))

    try:
        lost, refused, again = asyncio.run(main())
    finally:
        worker.kill()
        worker.wait()
    assert isinstance(lost, CropSocketError) and "lost" in str(lost)
    # the dead worker's socket file is still there: refused, not "never opened"
    assert isinstance(refused, CropSocketError) and not isinstance(refused, CropSocketMissing)
    assert again[0, 1] == 2


def marking(worker: int) -> Infer:
    """A worker that answers each crop with its own number."""

    async def infer(api: str, crops: np.ndarray, *_: object) -> np.ndarray:
        return np.full((len(crops), 1), worker, np.float32)

    return infer


def test_calls_spread_over_the_workers_and_skip_one_that_is_not_listening(
    sockets: Path,
) -> None:
    first, second, dead = (sockets / f"c-{i}.sock" for i in (1, 2, 3))
    with socket.socket(socket.AF_UNIX) as stale:  # a worker that died: its file, no listener
        stale.bind(str(dead))

    async def main() -> list[int]:
        one = await serve_crops(first, frozenset({"classify"}), marking(1), Recorded())
        two = await serve_crops(second, frozenset({"classify"}), marking(2), Recorded())
        async with one, two:
            client = CropSocketClient([first, second, dead])
            return [int((await client.call("classify", crops_of(1)))[0, 0]) for _ in range(6)]

    answered = asyncio.run(main())
    assert sorted(set(answered)) == [1, 2]


def test_no_socket_at_all_says_the_classifier_never_opened_one(sockets: Path) -> None:
    client = CropSocketClient([sockets / "c-1.sock", sockets / "c-2.sock"])
    with pytest.raises(CropSocketMissing):
        asyncio.run(client.call("classify", crops_of(1)))


def test_a_malformed_frame_closes_only_its_own_connection(sockets: Path) -> None:
    path = sockets / "c-1.sock"

    async def main() -> tuple[bytes, np.ndarray]:
        server = await serve_crops(path, frozenset({"classify"}), echo, Recorded())
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"HTTP" + bytes(REQUEST.size))
            closed = await asyncio.wait_for(reader.read(), 60)  # b"" once the server closes
            writer.close()
            return closed, await CropSocketClient([path]).call("classify", crops_of(2))

    closed, answer = asyncio.run(main())
    assert closed == b""
    assert answer[0, 0] == 2 * 224 * 224 * 3


@pytest.mark.parametrize(
    ("runner_map", "expected"),
    [
        (
            {"classifier": "file:///tmp/bentoml-uds-x/1.sock"},
            [
                "/tmp/bentoml-uds-x/classifier-crops-1.sock",
                "/tmp/bentoml-uds-x/classifier-crops-2.sock",
            ],
        ),
        (
            {"classifier": "unix:///run/a%20b/1.sock"},
            ["/run/a b/classifier-crops-1.sock", "/run/a b/classifier-crops-2.sock"],
        ),
        ({"classifier": "http://10.0.0.5:3000"}, []),
        ({"visionqueue": "http://127.0.0.1:3000"}, []),
    ],
)
def test_the_sockets_live_beside_bentomls_own(
    runner_map: dict[str, str], expected: list[str]
) -> None:
    paths = socket_paths("classifier", 2, json.dumps(runner_map))
    assert [str(p) for p in paths] == expected


def test_no_runner_map_means_no_sockets() -> None:
    assert socket_paths("classifier", 1, "") == []
    assert socket_paths("classifier", 1, "not json") == []


def test_each_call_carries_its_class_and_timeout_and_a_missed_deadline_is_a_504(
    sockets: Path,
) -> None:
    from visionqueue.bento.remote import classifier_failure
    from visionqueue.core.errors import DeadlineExceeded as Answered504
    from visionqueue.dataplane.priority import Priority as WorkClass
    from visionqueue.dataplane.priority_queue import DeadlineExceeded

    seen: list[tuple[int, float | None]] = []

    async def queue(api: str, crops: np.ndarray, work_class: int, timeout_s: float | None):
        seen.append((work_class, timeout_s))
        if timeout_s is not None and timeout_s < 0.01:
            raise DeadlineExceeded(WorkClass(work_class), timeout_s)
        return await echo(api, crops)

    async def main() -> BaseException:
        server = await serve_crops(sockets / "c-1.sock", frozenset({"classify"}), queue, Recorded())
        async with server:
            client = CropSocketClient([sockets / "c-1.sock"])
            await client.call("classify", crops_of(1), int(WorkClass.BULK))
            await client.call("classify", crops_of(2), int(WorkClass.INTERACTIVE), 2.5)
            with pytest.raises(CropSocketError) as caught:
                await client.call("classify", crops_of(3), int(WorkClass.INTERACTIVE), 0.001)
            return caught.value

    error = asyncio.run(main())
    assert seen == [(2, None), (0, 2.5), (0, 0.001)]
    assert isinstance(error, CropSocketError) and error.status == 504
    assert isinstance(classifier_failure(error), Answered504)  # the route answers 504
