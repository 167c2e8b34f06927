"""The classifier's priority batch queue: order, batch sizes per class, sharing, deadlines.

A counted forward (it records which API and which rows each pass ran, and can be held
until the test releases it) stands in for the model: the queue's behaviour is which rows
reach the forward, and when.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from visionqueue.dataplane.priority import Priority, job_priority
from visionqueue.dataplane.priority_queue import DeadlineExceeded, PriorityBatchQueue

INT, J, B = Priority.INTERACTIVE, Priority.JOBS, Priority.BULK


class CountedForward:
    """Rows carry their crop's id; the first pass is held until ``release``."""

    def __init__(self, hold_first: bool = True) -> None:
        self.passes: list[tuple[str, list[int]]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    async def __call__(self, api: str, crops: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self.run, api, crops)

    def run(self, api: str, crops: np.ndarray) -> np.ndarray:
        self.passes.append((api, [int(c[0, 0, 0]) for c in crops]))
        self.started.set()
        self.gate.wait(10)
        return crops[:, 0, 0, :1].astype(np.float32)

    def release(self) -> None:
        self.gate.set()


def crops(*ids: int) -> np.ndarray:
    out = np.zeros((len(ids), 2, 2, 3), np.uint8)
    for row, value in enumerate(ids):
        out[row] = value
    return out


def sizes(interactive: int = 4, jobs: int = 4, bulk: int = 2) -> dict[Priority, int]:
    return {INT: interactive, J: jobs, B: bulk}


async def wait_started(forward: CountedForward) -> None:
    await asyncio.to_thread(forward.started.wait, 10)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_interactive_call_runs_before_queued_jobs_and_bulk() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        forward = CountedForward()
        queue = PriorityBatchQueue(forward, sizes())
        first = asyncio.create_task(queue.submit("m", crops(1), J))
        await wait_started(forward)  # a jobs pass is running: it cannot be shared
        backlog = [asyncio.create_task(queue.submit("m", crops(10 + i), J)) for i in range(6)]
        bulk = [asyncio.create_task(queue.submit("m", crops(20 + i), B)) for i in range(3)]
        await settle()
        person = asyncio.create_task(queue.submit("m", crops(99), INT))
        await settle()
        forward.release()
        answer = await person
        assert answer[0, 0] == 99  # its own row
        await asyncio.gather(first, *backlog, *bulk)
        return forward.passes

    passes = asyncio.run(scenario())
    assert passes[0] == ("m", [1])
    assert passes[1] == ("m", [99]), passes  # next pass after the one running: the person's
    # then jobs in arrival order, in batches of the jobs size, bulk last in its smaller size
    assert passes[2:] == [("m", [10, 11, 12, 13]), ("m", [14, 15]), ("m", [20, 21]), ("m", [22])]


def test_a_class_never_mixes_models_and_keeps_its_batch_size() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        forward = CountedForward()
        queue = PriorityBatchQueue(forward, sizes(interactive=3))
        first = asyncio.create_task(queue.submit("a", crops(1), B))
        await wait_started(forward)
        calls = [queue.submit("a", crops(10 + i), INT) for i in range(4)]
        calls += [queue.submit("b", crops(30), INT)]
        tasks = [asyncio.create_task(c) for c in calls]
        await settle()
        forward.release()
        await asyncio.gather(first, *tasks)
        return forward.passes

    passes = asyncio.run(scenario())
    # oldest first: a's fourth call was queued before b's
    assert passes[1:] == [("a", [10, 11, 12]), ("a", [13]), ("b", [30])]


def test_bulk_is_never_starved_by_a_steady_stream_of_interactive_work() -> None:
    share_every = 3

    async def scenario() -> list[Priority]:
        forward = CountedForward(hold_first=False)
        queue = PriorityBatchQueue(forward, sizes(interactive=1), share_every, history=100)
        bulk = asyncio.create_task(queue.submit("m", crops(5), B))
        # more interactive work than the model can take: always some queued
        people = [asyncio.create_task(queue.submit("m", crops(i), INT)) for i in range(20)]
        await asyncio.gather(bulk, *people)
        return [ran.priority for ran in queue.history]

    order = asyncio.run(scenario())
    assert order.index(B) <= share_every + 1, order  # the guarantee: within share_every + 2
    assert order.count(B) == 1


def test_with_no_interactive_work_lower_classes_take_every_pass() -> None:
    async def scenario() -> list[Priority]:
        forward = CountedForward(hold_first=False)
        queue = PriorityBatchQueue(forward, sizes(jobs=1, bulk=1), share_every=100, history=50)
        tasks = [queue.submit("m", crops(i), J if i % 2 else B) for i in range(10)]
        await asyncio.gather(*tasks)
        return [ran.priority for ran in queue.history]

    order = asyncio.run(scenario())
    assert order == [J] * 5 + [B] * 5  # jobs first, then bulk: nothing idles, nothing lost


def test_a_call_past_its_deadline_is_answered_then_and_never_runs() -> None:
    async def scenario() -> tuple[list[tuple[str, list[int]]], bool]:
        forward = CountedForward()
        queue = PriorityBatchQueue(forward, sizes())
        first = asyncio.create_task(queue.submit("m", crops(1), J))
        await wait_started(forward)
        late = asyncio.create_task(queue.submit("m", crops(7), INT, timeout_s=0.05))
        with pytest.raises(DeadlineExceeded) as caught:
            await late  # answered while the jobs pass is still held: not when it ends
        held = not forward.gate.is_set()
        assert caught.value.priority is INT
        ontime = asyncio.create_task(queue.submit("m", crops(8), INT, timeout_s=30))
        await settle()
        forward.release()
        await asyncio.gather(first, ontime)
        return forward.passes, held

    passes, held = asyncio.run(scenario())
    assert held
    assert passes == [("m", [1]), ("m", [8])]  # crop 7 never reached the forward


def test_high_jobs_go_before_normal_ones_low_ones_are_bulk() -> None:
    assert job_priority("high") == (J, 0)
    assert job_priority("normal") == (J, 1)
    assert job_priority("low") == (B, 0)
    with pytest.raises(ValueError, match="priority must be one of"):
        job_priority("urgent")

    async def scenario() -> list[tuple[str, list[int]]]:
        forward = CountedForward()
        queue = PriorityBatchQueue(forward, sizes(jobs=1))
        first = asyncio.create_task(queue.submit("m", crops(1), J))
        await wait_started(forward)
        normal = asyncio.create_task(queue.submit("m", crops(2), J, rank=1))
        await settle()
        high = asyncio.create_task(queue.submit("m", crops(3), J, rank=0))
        await settle()
        forward.release()
        await asyncio.gather(first, normal, high)
        return forward.passes

    assert [ids for _, ids in asyncio.run(scenario())] == [[1], [3], [2]]


def test_a_failed_forward_fails_its_batch_only() -> None:
    async def forward(api: str, batch: np.ndarray) -> np.ndarray:
        if api == "broken":
            raise RuntimeError("model fell over")
        return batch[:, 0, 0, :1].astype(np.float32)

    async def scenario() -> None:
        queue = PriorityBatchQueue(forward, sizes())
        with pytest.raises(RuntimeError, match="fell over"):
            await queue.submit("broken", crops(1))
        assert (await queue.submit("ok", crops(4)))[0, 0] == 4

    asyncio.run(scenario())


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        PriorityBatchQueue(CountedForward(), {INT: 4, J: 4})
    with pytest.raises(ValueError):
        PriorityBatchQueue(CountedForward(), sizes(), share_every=0)
    assert Priority.parse(" Jobs ") is J
    with pytest.raises(ValueError):
        Priority.parse("vip")


def test_crops_of_another_size_never_join_a_pass() -> None:
    async def scenario() -> list[tuple[str, list[int]]]:
        forward = CountedForward()
        queue = PriorityBatchQueue(forward, sizes())
        first = asyncio.create_task(queue.submit("m", crops(1), J))
        await wait_started(forward)
        odd = np.full((1, 3, 3, 3), 50, np.uint8)  # a caller's crop of the wrong size
        calls = [queue.submit("m", crops(10), J), queue.submit("m", odd, J)]
        calls += [queue.submit("m", crops(11), J)]
        tasks = [asyncio.create_task(c) for c in calls]
        await settle()
        forward.release()
        await asyncio.gather(first, *tasks)
        return forward.passes

    passes = asyncio.run(scenario())
    # the 2x2 crops share a pass; the 3x3 one runs on its own (and would fail alone)
    assert passes[1:] == [("m", [10, 11]), ("m", [50])]


class GatedForward:
    """Every pass waits for its own release; records the passes running at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.passes: list[list[int]] = []
        self.running = 0
        self.most_at_once = 0
        self.gates: list[asyncio.Event] = []

    async def __call__(self, api: str, crops: np.ndarray) -> np.ndarray:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.passes.append([int(c[0, 0, 0]) for c in crops])
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await gate.wait()
        self.running -= 1
        return crops[:, 0, 0, :1].astype(np.float32)

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


def test_with_lanes_a_person_never_waits_for_job_passes() -> None:
    async def scenario() -> tuple[GatedForward, GatedForward]:
        serial, lanes = GatedForward("serial"), GatedForward("lanes")
        queue = PriorityBatchQueue(serial, sizes(jobs=2), background=lanes, lanes=2)
        backlog = [asyncio.create_task(queue.submit("m", crops(10 + i), J)) for i in range(8)]
        await settle()
        # two job passes hold both lanes and are not released: without lanes the person's
        # pass would wait for one of them
        assert lanes.running == 2 and [len(p) for p in lanes.passes] == [2, 2]
        person = asyncio.create_task(queue.submit("m", crops(99), INT))
        await settle()
        assert serial.passes == [[99]]  # it runs now, beside them, on the serial forward
        serial.release_all()
        assert (await person)[0, 0] == 99
        while not all(t.done() for t in backlog):
            lanes.release_all()
            await settle()
        await asyncio.gather(*backlog)
        return serial, lanes

    serial, lanes = asyncio.run(scenario())
    assert serial.passes == [[99]]  # no job crop ever ran on the serial forward
    assert sorted(i for p in lanes.passes for i in p) == list(range(10, 18))
    assert lanes.most_at_once == 2  # never more passes at once than lanes


def test_lanes_keep_jobs_before_bulk_and_share_with_bulk() -> None:
    async def scenario() -> list[list[int]]:
        serial, lanes = GatedForward("serial"), GatedForward("lanes")
        queue = PriorityBatchQueue(serial, sizes(jobs=1, bulk=1), 2, background=lanes, lanes=1)
        first = asyncio.create_task(queue.submit("m", crops(1), J))
        await settle()
        jobs = [asyncio.create_task(queue.submit("m", crops(10 + i), J)) for i in range(5)]
        bulk = [asyncio.create_task(queue.submit("m", crops(50 + i), B)) for i in range(2)]
        await settle()
        while not all(t.done() for t in [first, *jobs, *bulk]):
            lanes.release_all()
            await settle()
        return lanes.passes

    order = [p[0] for p in asyncio.run(scenario())]
    # one lane: jobs first, and a bulk call passed over twice (share_every=2) runs next
    assert order == [1, 10, 11, 50, 12, 13, 51, 14]


def test_starved_lanes_get_a_pass_on_the_serial_path_within_share_every() -> None:
    share_every = 3

    async def scenario() -> tuple[list[list[int]], list[list[int]], int]:
        # lanes the kernel gives no CPU (SCHED_IDLE beside interactive passes on every
        # core): their passes never end while the people keep the serial path busy
        serial, lanes = CountedForward(hold_first=False), GatedForward("lanes")
        queue = PriorityBatchQueue(
            serial, sizes(interactive=1, jobs=1), share_every, background=lanes, lanes=1
        )
        stuck = asyncio.create_task(queue.submit("m", crops(1), J))
        await settle()
        assert lanes.passes == [[1]]
        waiting = [asyncio.create_task(queue.submit("m", crops(10 + i), J)) for i in range(2)]
        people = [asyncio.create_task(queue.submit("m", crops(100 + i), INT)) for i in range(8)]
        # before the serial path lent passes, the waiting jobs never ran
        await asyncio.wait_for(asyncio.gather(*waiting, *people), 10)
        ran_in_lanes = len(lanes.passes)
        lanes.release_all()
        await stuck
        return [ids for _, ids in serial.passes], lanes.passes, ran_in_lanes

    on_serial, in_lanes, ran_in_lanes = asyncio.run(scenario())
    # every share_every interactive passes in a row, a waiting job pass runs on the serial path
    assert on_serial == [[100], [101], [102], [10], [103], [104], [105], [11], [106], [107]]
    assert in_lanes == [[1]] and ran_in_lanes == 1


def test_a_serial_path_that_went_idle_lends_no_pass() -> None:
    async def scenario() -> list[list[int]]:
        serial, lanes = CountedForward(hold_first=False), GatedForward("lanes")
        queue = PriorityBatchQueue(serial, sizes(jobs=1), 2, background=lanes, lanes=1)
        stuck = asyncio.create_task(queue.submit("m", crops(1), J))
        waiting = asyncio.create_task(queue.submit("m", crops(2), J))
        await settle()
        for person in range(5):  # one at a time: the serial path idles between them
            await queue.submit("m", crops(100 + person), INT)
        lanes.release_all()
        while not (stuck.done() and waiting.done()):
            lanes.release_all()
            await settle()
        return [ids for _, ids in serial.passes]

    assert asyncio.run(scenario()) == [[100], [101], [102], [103], [104]]


def test_lanes_need_a_background_forward_and_lanes() -> None:
    forward = CountedForward(hold_first=False)
    with pytest.raises(ValueError):
        PriorityBatchQueue(forward, sizes(), background=forward)
    with pytest.raises(ValueError):
        PriorityBatchQueue(forward, sizes(), lanes=2)
