"""Turns on the classifier's serial path: one pass at a time, a waiting person's first."""

from __future__ import annotations

import asyncio

from visionqueue.dataplane.turns import PassTurns


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_waiting_interactive_pass_goes_before_waiting_background_ones() -> None:
    async def scenario() -> list[str]:
        turns, order, running = PassTurns(), [], []
        gates = {name: asyncio.Event() for name in ("bg1", "bg2", "bg3", "person")}

        async def run(name: str, first: bool) -> None:
            async with turns.turn(first):
                running.append(name)
                assert len(running) == 1, running  # never two passes at once
                order.append(name)
                await gates[name].wait()
                running.remove(name)

        tasks = [asyncio.create_task(run("bg1", False))]
        await settle()
        tasks += [asyncio.create_task(run(n, False)) for n in ("bg2", "bg3")]
        await settle()
        tasks.append(asyncio.create_task(run("person", True)))
        await settle()
        for name in ("bg1", "person", "bg2", "bg3"):
            gates[name].set()
            await settle()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["bg1", "person", "bg2", "bg3"]


def test_a_waiter_that_goes_away_does_not_keep_the_turn() -> None:
    async def scenario() -> list[str]:
        turns, order = PassTurns(), []
        gate = asyncio.Event()

        async def run(name: str, first: bool, hold: bool = False) -> None:
            async with turns.turn(first):
                order.append(name)
                if hold:
                    await gate.wait()

        holder = asyncio.create_task(run("holder", False, hold=True))
        await settle()
        gone = asyncio.create_task(run("gone", True))
        later = asyncio.create_task(run("later", False))
        await settle()
        gone.cancel()
        await settle()
        gate.set()
        await asyncio.gather(holder, later)
        async with turns.turn(True):  # free again
            order.append("after")
        return order

    assert asyncio.run(scenario()) == ["holder", "later", "after"]
