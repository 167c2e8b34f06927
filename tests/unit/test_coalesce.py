"""The front's crop coalescer: merged calls, answers routed back to the right caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from visionqueue.dataplane.coalesce import CropCoalescer


def crop(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, dtype=np.uint8)


class Recorder:
    """A stand-in batch call that answers each row with its crop's value, after a delay."""

    def __init__(self, delay: float = 0.01, fail: Exception | None = None) -> None:
        self.sizes: list[int] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.sizes.append(len(crops))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return crops.reshape(len(crops), -1)[:, :1].astype(np.float32)


def test_a_lone_crop_is_sent_at_once_on_its_own() -> None:
    call = Recorder()

    async def main() -> np.ndarray:
        return await CropCoalescer(call, max_batch=16).classify(crop(7))

    out = asyncio.run(main())
    assert call.sizes == [1]
    assert out.shape == (1, 1) and out[0, 0] == 7


def test_crops_arriving_during_a_call_are_merged_and_answered_in_order() -> None:
    call = Recorder()

    async def main() -> list[float]:
        coalescer = CropCoalescer(call, max_batch=16, max_in_flight=1)
        outs = await asyncio.gather(*(coalescer.classify(crop(v)) for v in range(1, 11)))
        return [float(o[0, 0]) for o in outs]

    assert asyncio.run(main()) == [float(v) for v in range(1, 11)]
    assert call.sizes == [1, 9]  # the first goes alone; the rest waited for it together


def test_merged_calls_never_exceed_max_batch_or_in_flight() -> None:
    call = Recorder()
    peak = 0
    inner = call.__call__
    active = 0

    async def counting(crops: np.ndarray) -> np.ndarray:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return await inner(crops)
        finally:
            active -= 1

    async def main() -> None:
        coalescer = CropCoalescer(counting, max_batch=4, max_in_flight=2)
        outs = await asyncio.gather(*(coalescer.classify(crop(v)) for v in range(20)))
        assert [float(o[0, 0]) for o in outs] == [float(v) for v in range(20)]

    asyncio.run(main())
    assert max(call.sizes) <= 4 and sum(call.sizes) == 20
    assert peak == 2


def test_a_failed_call_fails_every_waiter_of_that_call_only() -> None:
    boom = RuntimeError("classifier down")
    call = Recorder(fail=boom)

    async def main() -> list[BaseException | np.ndarray]:
        coalescer = CropCoalescer(call, max_batch=16, max_in_flight=1)
        return await asyncio.gather(
            *(coalescer.classify(crop(v)) for v in range(5)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(r is boom for r in results)


def test_a_caller_that_went_away_is_not_sent() -> None:
    call = Recorder(delay=0.05)

    async def main() -> None:
        coalescer = CropCoalescer(call, max_batch=16, max_in_flight=1)
        first = asyncio.ensure_future(coalescer.classify(crop(1)))
        await asyncio.sleep(0)  # the first call is now in flight
        gone = asyncio.ensure_future(coalescer.classify(crop(2)))
        kept = asyncio.ensure_future(coalescer.classify(crop(3)))
        await asyncio.sleep(0)
        gone.cancel()
        assert (await kept)[0, 0] == 3
        await first

    asyncio.run(main())
    assert call.sizes == [1, 1]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        CropCoalescer(Recorder(), max_batch=0)


def test_one_requests_crops_leave_together_in_order_split_at_max_batch() -> None:
    call = Recorder()

    async def main() -> np.ndarray:
        coalescer = CropCoalescer(call, max_batch=4, max_in_flight=2)
        return await coalescer.classify_many(np.stack([crop(v) for v in range(1, 7)]))

    out = asyncio.run(main())
    assert [float(v) for v in out[:, 0]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert call.sizes == [4, 2]  # not six calls of one: the request was queued at once
