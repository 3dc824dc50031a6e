"""Every outcome of one task: how the delivery is settled and what the client hears."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from llm_stream_worker import generation
from llm_stream_worker.settings import WorkerSettings
from mqcommon.batching import EventBatcher
from mqcommon.errors import PoisonUpstreamError, RetryableUpstreamError
from mqcommon.schemas import ChatTask, EventBatch


class FakeDelivery:
    """Stands in for an aio-pika incoming message: records how it was settled."""

    def __init__(self, body: bytes, delivery_count: int = 0) -> None:
        self.body = body
        self.headers = {"x-delivery-count": delivery_count} if delivery_count else {}
        self.settled: str | None = None

    async def ack(self) -> None:
        self.settled = "ack"

    async def nack(self, requeue: bool = True) -> None:
        self.settled = "requeue" if requeue else "nack"

    async def reject(self, requeue: bool = False) -> None:
        self.settled = "reject"


class Sink:
    def __init__(self) -> None:
        self.events = []

    async def __call__(self, body: bytes) -> None:
        self.events.extend(EventBatch.decode(body).events)


def answer_with(*pieces: str, fail: Exception | None = None, hang: bool = False):
    async def fake(client, settings, message, model=None) -> AsyncIterator[str]:
        for piece in pieces:
            yield piece
        if hang:
            await asyncio.sleep(3600)
        if fail is not None:
            raise fail

    return fake


async def run(monkeypatch, fake, *, delivery_count: int = 0, body: bytes | None = None, **cfg):
    monkeypatch.setattr(generation, "stream_answer", fake)
    sink = Sink()
    publisher = EventBatcher(sink, producer="t", flush_interval_s=0.01, flush_max_bytes=10_000)
    settings = WorkerSettings(**{"task_max_deliveries": 3, "llm_timeout_s": 5, **cfg})
    task = ChatTask(session_id="sess", message="hi")
    delivery = FakeDelivery(body if body is not None else task.encode(), delivery_count)
    running = generation.Running(session_id="sess", started_at=0)
    await generation.process(delivery, running, settings=settings, llm=None, publisher=publisher)
    await publisher.drain()
    return delivery, sink.events


async def test_completed_generation_publishes_chunks_then_done_and_acks(monkeypatch) -> None:
    delivery, events = await run(monkeypatch, answer_with("Hel", "lo"))
    assert delivery.settled == "ack"
    assert [(e.kind, e.offset, e.text) for e in events] == [
        ("started", 0, ""), ("chunk", 0, "Hel"), ("chunk", 3, "lo"), ("done", 5, ""),
    ]


async def test_poison_upstream_error_tells_the_client_and_acks(monkeypatch) -> None:
    delivery, events = await run(monkeypatch, answer_with(fail=PoisonUpstreamError("bad", status_code=400)))
    assert delivery.settled == "ack"
    assert events[-1].kind == "error" and "bad" in events[-1].error


async def test_retryable_error_requeues_while_deliveries_remain(monkeypatch) -> None:
    delivery, events = await run(monkeypatch, answer_with("a", fail=RetryableUpstreamError("503")))
    assert delivery.settled == "requeue"
    assert all(e.kind != "error" for e in events)


async def test_retryable_error_on_the_last_delivery_dead_letters_with_an_error_event(monkeypatch) -> None:
    delivery, events = await run(
        monkeypatch, answer_with(fail=RetryableUpstreamError("503")), delivery_count=2
    )
    assert delivery.settled == "reject"
    assert events[-1].kind == "error" and events[-1].attempt == 3


async def test_timeout_ends_the_session_with_an_error(monkeypatch) -> None:
    delivery, events = await run(monkeypatch, answer_with("a", hang=True), llm_timeout_s=0.2)
    assert delivery.settled == "ack"
    assert events[-1].kind == "error" and "timed out" in events[-1].error


async def test_malformed_task_is_dead_lettered(monkeypatch) -> None:
    delivery, events = await run(monkeypatch, answer_with("a"), body=b'{"nope": 1}')
    assert delivery.settled == "reject" and events == []


@pytest.mark.parametrize(("reason", "settled", "last"), [
    (generation.ABANDONED, "ack", "error"),
    (generation.SHUTDOWN, "requeue", "chunk"),
])
async def test_cancellation_settles_by_reason(monkeypatch, reason, settled, last) -> None:
    monkeypatch.setattr(generation, "stream_answer", answer_with("a", hang=True))
    sink = Sink()
    publisher = EventBatcher(sink, producer="t", flush_interval_s=0.01, flush_max_bytes=10_000)
    delivery = FakeDelivery(ChatTask(session_id="s", message="hi").encode())
    running = generation.Running(session_id="s", started_at=0)
    task = asyncio.create_task(
        generation.process(delivery, running, settings=WorkerSettings(), llm=None, publisher=publisher)
    )
    await asyncio.sleep(0.05)
    running.cancel_reason = reason
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await publisher.drain()
    assert delivery.settled == settled
    assert sink.events[-1].kind == last
