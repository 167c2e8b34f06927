"""The greedy batch policy: learned waits never hold a lone request back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

from visionqueue.bento.patches import apply_bentoml_patches, revert_bentoml_patches


@pytest.fixture(autouse=True)
def bentomls_own() -> Iterator[None]:
    """Each test starts and ends with BentoML's own dispatcher."""
    revert_bentoml_patches()
    yield
    revert_bentoml_patches()


def apply_policy(policy: str) -> None:
    apply_bentoml_patches(policy)


LEARNED_WAIT_S = 5.0
WARM_UP_CALLS = 60  # more than BentoML's training phase takes (about 35 calls)


def _loaded_optimizer() -> Optimizer:
    optimizer = Optimizer(max_latency=30.0)
    for _ in range(20):  # batches that waited 0.6 s in the queue (a burst of load)
        optimizer.log_outbound(n=16, wait=0.6, duration=0.4)
    return optimizer


def test_bentomls_own_policy_learns_a_wait_from_queueing() -> None:
    # the behaviour the greedy policy exists for (fails if BentoML changes it)
    optimizer = _loaded_optimizer()
    optimizer.trigger_refresh()
    assert optimizer.wait > 0.5


def _dispatcher(
    max_latency_ms: int = 30000, max_batch: int = 4, work_s: float = 0.02
) -> tuple[Any, list[int], CorkDispatcher[Any, Any]]:
    """A real CorkDispatcher over a callback that records batch sizes and takes ``work_s``."""
    sizes: list[int] = []

    async def callback(batch: Sequence[int]) -> list[int]:
        sizes.append(len(batch))
        await asyncio.sleep(work_s)
        return [x * 10 for x in batch]

    dispatcher: CorkDispatcher[Any, Any] = CorkDispatcher(
        max_latency_ms, max_batch, fallback=lambda: -1, get_batch_size=lambda _: 1
    )
    return dispatcher(callback), sizes, dispatcher


def test_greedy_dispatcher_answers_a_lone_request_at_once_and_batches_a_burst() -> None:
    apply_policy("greedy")

    async def main() -> tuple[float, list[int], list[int]]:
        call, sizes, dispatcher = _dispatcher()
        for i in range(WARM_UP_CALLS):  # past BentoML's training phase: its wait now applies
            await call(i)
        del sizes[:]
        dispatcher.optimizer.wait = LEARNED_WAIT_S  # type: ignore[assignment]  # from a burst
        t0 = time.perf_counter()
        assert await call(1) == 10
        lone = time.perf_counter() - t0
        results = await asyncio.gather(*(call(i) for i in range(9)))
        return lone, list(results), sizes

    lone, results, sizes = asyncio.run(main())
    # BentoML's own policy holds it ~4.75 s (0.95 x the learned wait); no machine is that slow
    assert lone < LEARNED_WAIT_S / 2
    assert results == [i * 10 for i in range(9)]
    assert sizes == [1, 4, 4, 1]  # the lone one alone; the burst in full batches


def test_greedy_dispatcher_sleeps_while_a_batch_runs() -> None:
    apply_policy("greedy")
    wakeups = 0

    async def main() -> None:
        nonlocal wakeups
        call, _, _ = _dispatcher()
        real_sleep = asyncio.sleep

        async def counting_sleep(delay: float, *args: Any) -> Any:
            nonlocal wakeups
            wakeups += delay < 0.01  # BentoML's controller polls with 1 ms sleeps
            return await real_sleep(delay, *args)

        asyncio.sleep = counting_sleep  # type: ignore[assignment]
        try:
            await asyncio.gather(*(call(i) for i in range(12)))
        finally:
            asyncio.sleep = real_sleep  # type: ignore[assignment]

    asyncio.run(main())
    assert wakeups == 0


def test_greedy_dispatcher_drops_requests_past_the_deadline() -> None:
    apply_policy("greedy")

    async def main() -> list[int]:
        # one at a time, 1.5 s each: the queued requests wait past the 1 s deadline by
        # construction, while the first has a whole second to be dispatched
        call, _, _ = _dispatcher(max_latency_ms=1000, max_batch=1, work_s=1.5)
        return list(await asyncio.gather(*(call(i) for i in range(4))))

    results = asyncio.run(main())
    assert results[0] == 0 and -1 in results  # the fallback is BentoML's 503 path
