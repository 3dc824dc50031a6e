"""Coalescing: first tokens go at once, the rest wait at most one flush interval."""

from __future__ import annotations

import asyncio

import pytest
from mqcommon.batching import EventBatcher
from mqcommon.errors import BrokerUnavailable
from mqcommon.schemas import EventBatch, StreamEvent


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[EventBatch] = []
        self.fail = fail

    async def __call__(self, body: bytes) -> None:
        if self.fail:
            raise BrokerUnavailable("nack")
        self.batches.append(EventBatch.decode(body))


def ev(text: str, offset: int = 0, sid: str = "s") -> StreamEvent:
    return StreamEvent(session_id=sid, kind="chunk", offset=offset, text=text)


def publisher(rec: Recorder, interval: float = 0.05, max_bytes: int = 100_000) -> EventBatcher:
    return EventBatcher(rec, producer="t", flush_interval_s=interval, flush_max_bytes=max_bytes)


async def test_urgent_events_of_one_loop_turn_share_a_batch() -> None:
    rec = Recorder()
    pub = publisher(rec, interval=10)
    futures = [pub.emit(ev(f"first {i}", sid=f"s{i}"), urgent=True) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert len(rec.batches) == 1 and len(rec.batches[0].events) == 5


async def test_urgent_event_is_published_without_waiting_for_the_timer() -> None:
    rec = Recorder()
    pub = publisher(rec, interval=10)
    await asyncio.wait_for(pub.emit(ev("first"), urgent=True), 1)
    assert [[e.text for e in b.events] for b in rec.batches] == [["first"]]


async def test_other_events_are_coalesced_into_one_batch_per_interval() -> None:
    rec = Recorder()
    pub = publisher(rec, interval=0.05)
    futures = [pub.emit(ev(str(i), i, sid=f"s{i % 3}")) for i in range(10)]
    assert rec.batches == []
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert len(rec.batches) == 1 and len(rec.batches[0].events) == 10


async def test_size_cap_flushes_early() -> None:
    rec = Recorder()
    pub = publisher(rec, interval=10, max_bytes=1024)
    fut = pub.emit(ev("x" * 2000))
    await asyncio.wait_for(fut, 1)
    assert len(rec.batches) == 1


async def test_order_is_kept_across_batches() -> None:
    rec = Recorder()
    pub = publisher(rec, interval=0.01)
    pub.emit(ev("a", 0), urgent=True)
    pub.emit(ev("b", 1))
    pub.emit(ev("c", 2))
    await asyncio.wait_for(pub.emit(ev("d", 3), urgent=True), 1)
    await pub.drain()
    assert [e.text for b in rec.batches for e in b.events] == ["a", "b", "c", "d"]


async def test_unconfirmed_batch_fails_its_future_and_is_counted() -> None:
    pub = publisher(Recorder(fail=True))
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pub.emit(ev("a"), urgent=True), 1)
    assert pub.failures == 1
