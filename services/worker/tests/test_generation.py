"""Every outcome of one task: how the delivery is settled and what the client hears."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from llm_stream_worker import generation
from llm_stream_worker.outbox import Outbox
from llm_stream_worker.settings import WorkerSettings
from mqcommon.errors import BrokerUnavailable, PoisonUpstreamError, RetryableUpstreamError
from mqcommon.schemas import ChatTask, decode_frames


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
    """Both ways out of a generation: live frames, and the transcript on the history stream."""

    def __init__(self, *, history_fails: bool = False) -> None:
        self.frames = []
        self.transcripts = []
        self.history_fails = history_fails

    async def live(self, replica: str, body: bytes) -> None:
        self.frames.extend(decode_frames(body)[0])

    async def record(self, record) -> None:
        if self.history_fails:
            raise BrokerUnavailable("no confirm")
        self.transcripts.append(record)

    def outbox(self) -> Outbox:
        return Outbox(self.live, producer="t", flush_interval_s=0.01, flush_max_bytes=10_000,
                      route_ttl_s=60, keep_ended_s=15)

    @property
    def text(self) -> str:
        return "".join(f.text for f in self.frames)

    @property
    def end(self):
        ends = [f.end for f in self.frames if f.end is not None]
        return ends[-1] if ends else None


def answer_with(*pieces: str, fail: Exception | None = None, hang: bool = False):
    async def fake(client, settings, task, outcome=None) -> AsyncIterator[list[tuple[str, str]]]:
        for piece in pieces:
            yield [("content", piece)]
        if hang:
            await asyncio.sleep(3600)
        if fail is not None:
            raise fail

    return fake


async def run(monkeypatch, fake, *, delivery_count: int = 0, body: bytes | None = None,
              sink: Sink | None = None, **cfg):
    monkeypatch.setattr(generation, "stream_task", fake)
    sink = sink or Sink()
    outbox = sink.outbox()
    settings = WorkerSettings(**{"task_max_deliveries": 3, "llm_timeout_s": 5, **cfg})
    task = ChatTask(session_id="sess", message="hi", reply_to="api-1")
    delivery = FakeDelivery(body if body is not None else task.encode(), delivery_count)
    running = generation.Running(session_id="sess", started_at=0)
    await generation.process(
        delivery, running, settings=settings, llm=None, outbox=outbox, record=sink.record
    )
    await outbox.drain()
    return delivery, sink


async def test_completed_generation_sends_the_text_then_done_and_acks_after_the_transcript(
    monkeypatch,
) -> None:
    delivery, sink = await run(monkeypatch, answer_with("Hel", "lo"))
    assert delivery.settled == "ack"
    assert sink.frames[0].started and sink.text == "Hello"
    assert sink.end.kind == "done" and sink.end.length == 5
    [transcript] = sink.transcripts
    assert (transcript.kind, transcript.text, transcript.end.kind) == ("transcript", "Hello", "done")


async def test_an_unconfirmed_transcript_requeues_the_task(monkeypatch) -> None:
    delivery, _ = await run(monkeypatch, answer_with("Hel", "lo"), sink=Sink(history_fails=True))
    assert delivery.settled == "requeue"


async def test_poison_upstream_error_tells_the_client_and_acks(monkeypatch) -> None:
    delivery, sink = await run(monkeypatch, answer_with(fail=PoisonUpstreamError("bad", status_code=400)))
    assert delivery.settled == "ack"
    assert sink.end.kind == "error" and "bad" in sink.end.error
    assert sink.transcripts[0].end.kind == "error"


async def test_retryable_error_requeues_while_deliveries_remain(monkeypatch) -> None:
    delivery, sink = await run(monkeypatch, answer_with("a", fail=RetryableUpstreamError("503")))
    assert delivery.settled == "requeue"
    assert sink.end is None and sink.transcripts == []


async def test_retryable_error_on_the_last_delivery_dead_letters_with_an_error(monkeypatch) -> None:
    delivery, sink = await run(
        monkeypatch, answer_with(fail=RetryableUpstreamError("503")), delivery_count=2
    )
    assert delivery.settled == "reject"
    assert sink.end.kind == "error" and sink.frames[-1].attempt == 3


async def test_timeout_ends_the_session_with_an_error(monkeypatch) -> None:
    delivery, sink = await run(monkeypatch, answer_with("a", hang=True), llm_timeout_s=0.2)
    assert delivery.settled == "ack"
    assert sink.end.kind == "error" and "timed out" in sink.end.error


async def test_malformed_task_is_dead_lettered(monkeypatch) -> None:
    delivery, sink = await run(monkeypatch, answer_with("a"), body=b'{"nope": 1}')
    assert delivery.settled == "reject" and sink.frames == []


@pytest.mark.parametrize(("reason", "settled", "ends"), [
    (generation.ABANDONED, "ack", True),
    (generation.SHUTDOWN, "requeue", False),
    (generation.CANCELLED, "ack", True),
    (generation.LOST, None, False),  # the broker requeued it when the channel closed
])
async def test_cancellation_settles_by_reason(monkeypatch, reason, settled, ends) -> None:
    monkeypatch.setattr(generation, "stream_task", answer_with("a", hang=True))
    sink = Sink()
    outbox = sink.outbox()
    delivery = FakeDelivery(ChatTask(session_id="s", message="hi", reply_to="api-1").encode())
    running = generation.Running(session_id="s", started_at=0)
    task = asyncio.create_task(
        generation.process(delivery, running, settings=WorkerSettings(), llm=None, outbox=outbox,
                           record=sink.record)
    )
    await asyncio.sleep(0.05)
    running.cancel_reason = reason
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await outbox.drain()
    assert delivery.settled == settled
    assert (sink.end is not None) is ends


async def test_typed_parts_reach_the_frames_and_the_transcript_with_the_finish_reason(monkeypatch) -> None:
    async def fake(client, settings, task, outcome=None):
        yield [("reasoning", "think")]
        yield [("tool.0.id", "call_1"), ("tool.0.name", "f"), ("tool.0.args", '{"a"')]
        yield [("tool.0.args", ": 1}")]
        outcome.finish = "tool_calls"

    _, sink = await run(monkeypatch, fake)
    transcript = sink.transcripts[-1]
    assert transcript.text == 'thinkcall_1f{"a": 1}'
    assert transcript.kinds == [("reasoning", 5), ("tool.0.id", 6), ("tool.0.name", 1), ("tool.0.args", 8)]
    assert transcript.end.finish == "tool_calls"
    assert sink.text == transcript.text
    kinds = [run for frame in sink.frames for run in frame.kinds or [("content", len(frame.text))]]
    keys = [key for index, (key, _) in enumerate(kinds) if index == 0 or kinds[index - 1][0] != key]
    assert keys == ["reasoning", "tool.0.id", "tool.0.name", "tool.0.args"]
    assert sink.end.finish == "tool_calls"
