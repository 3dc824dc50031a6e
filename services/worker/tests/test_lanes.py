"""The lanes of a pool share a worker's slots: higher lanes first, the lowest never starved."""

from __future__ import annotations

import asyncio

from llm_stream_worker.lanes import LaneGate

PRIORITY, DEFAULT, FLEX = 0, 1, 2


async def _started_order(gate: LaneGate, waiting: list[int], frees: int) -> list[int]:
    order: list[int] = []

    async def task(rank: int) -> None:
        await gate.acquire(rank)
        order.append(rank)

    tasks = [asyncio.create_task(task(rank)) for rank in waiting]
    await asyncio.sleep(0)
    for _ in range(frees):
        gate.release()
        await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return order


async def test_a_freed_slot_goes_to_the_highest_lane_waiting() -> None:
    gate = LaneGate(slots=0, lanes=3, min_share=0.1)
    order = await _started_order(gate, [FLEX, DEFAULT, PRIORITY, DEFAULT], frees=3)
    assert order == [PRIORITY, DEFAULT, DEFAULT]


async def test_the_lowest_lane_gets_its_minimum_share_under_a_saturating_higher_lane() -> None:
    gate = LaneGate(slots=0, lanes=3, min_share=0.25)
    order = await _started_order(gate, [PRIORITY] * 20 + [FLEX] * 5, frees=12)
    assert order.count(FLEX) == 3  # one start in every four
    assert order[3] == FLEX and order[7] == FLEX and order[11] == FLEX


async def test_a_free_slot_is_taken_at_once_and_a_cancelled_waiter_gives_up_nothing() -> None:
    gate = LaneGate(slots=1, lanes=2, min_share=0.5)
    await asyncio.wait_for(gate.acquire(1), 1)
    assert gate.free == 0
    waiter = asyncio.create_task(gate.acquire(0))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gate.release()
    assert gate.free == 1
