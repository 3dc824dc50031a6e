"""Queue positions from the queue log, and the Retry-After of admission control."""

from __future__ import annotations

import asyncio

import pytest
from llm_stream_api.broker.queue_positions import RATE_WINDOW_S, QueueTracker
from llm_stream_api.protocol.errors import Overloaded
from llm_stream_api.quota import admission
from llm_stream_api.sessions.hub import Session
from llm_stream_api.settings import APISettings
from mqcommon.schemas import LEFT, QUEUED, WITHDRAWN, QueueEvent
from mqcommon.topology import QueueSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock | None = None) -> QueueTracker:
    return QueueTracker(QueueSpec("log"), clock=clock or Clock())


def test_positions_follow_the_log_order_and_move_up_as_tasks_leave() -> None:
    queue = tracker()
    for sid in ("a", "b", "c", "d"):
        queue.apply(QueueEvent(QUEUED, sid))
    assert [queue.position_of(s) for s in "abcd"] == [1, 2, 3, 4]
    queue.apply(QueueEvent(LEFT, "a"))
    queue.apply(QueueEvent(WITHDRAWN, "c"))  # refused by the queue: nobody waits for it
    assert [queue.position_of(s) for s in "abcd"] == [None, 1, None, 2]
    assert queue.waiting == 2
    queue.apply(QueueEvent(LEFT, "unknown"))  # a redelivery, a task from before the log
    assert queue.waiting == 2


def test_the_drain_rate_counts_tasks_that_left_in_the_window() -> None:
    clock = Clock()
    queue = tracker(clock)
    for index in range(10):
        queue.apply(QueueEvent(QUEUED, f"s{index}"))
    for index in range(6):
        queue.apply(QueueEvent(LEFT, f"s{index}", at=clock.now + index))
    clock.now += 5
    assert queue.drain_rate() == pytest.approx(5 / 5)  # five intervals in the five seconds since the first
    assert queue.eta(3) == 3.0
    assert queue.seconds_until(7) == 7
    clock.now += 10
    assert queue.drain_rate() == pytest.approx(5 / 15)  # none since: it slows down
    clock.now += RATE_WINDOW_S + 1
    assert queue.drain_rate() == 0 and queue.eta(1) is None


def test_ghosts_at_the_head_are_dropped_only_when_seen_twice() -> None:
    queue = tracker()
    for sid in ("ghost", "x", "y"):
        queue.apply(QueueEvent(QUEUED, sid))
    assert queue.reconcile(2) == 0  # maybe a worker's "left" is on its way
    assert queue.reconcile(2) == 1  # still there: it never comes
    assert queue.position_of("x") == 1
    assert queue.reconcile(2) == 0


async def test_watched_sessions_learn_their_position_and_wake_their_readers() -> None:
    queue = tracker()
    for sid in ("a", "b"):
        queue.apply(QueueEvent(QUEUED, sid))
    session = Session("b", 0.0)
    session.readers = 1
    queue.watch(session)
    await asyncio.sleep(0.05)
    assert session.queue_position == 2
    woke = asyncio.create_task(session.wait(2))
    await asyncio.sleep(0)
    queue.apply(QueueEvent(LEFT, "a"))
    assert await woke
    assert session.queue_position == 1
    queue.apply(QueueEvent(LEFT, "b"))  # taken; its first frame is on its way
    await asyncio.sleep(0.05)
    assert session.queue_position == 1
    session.started = True
    queue.apply(QueueEvent(QUEUED, "c"))
    await asyncio.sleep(0.05)
    assert session.queue_position is None


def test_retry_after_comes_from_the_backlog_and_the_rate() -> None:
    assert admission.retry_after(10, 2.0, 120) == 5
    assert admission.retry_after(1, 100.0, 120) == 1
    assert admission.retry_after(5, 0.0, 120) == 120  # nothing drains
    assert admission.retry_after(10_000, 1.0, 120) == 120


def test_a_full_queue_and_too_many_streams_answer_503_with_retry_after() -> None:
    settings = APISettings(max_queued_tasks=2, max_open_streams=1, retry_after_max_s=60)
    clock = Clock()
    queue = tracker(clock)
    queue.apply(QueueEvent(QUEUED, "a"))
    admission.check_queue(settings, queue)  # one waiting: room for another
    queue.apply(QueueEvent(QUEUED, "b"))
    with pytest.raises(Overloaded) as full:
        admission.check_queue(settings, queue)
    assert full.value.status == 503 and full.value.headers == {"Retry-After": "60"}
    for index in range(3):
        queue.apply(QueueEvent(QUEUED, f"x{index}"))
        queue.apply(QueueEvent(LEFT, f"x{index}", at=clock.now + index * 2))
    clock.now += 6
    with pytest.raises(Overloaded) as draining:
        admission.check_queue(settings, queue)
    assert draining.value.headers == {"Retry-After": "3"}  # 1 over the bound, 2 intervals in 6 s

    streams = admission.StreamCount(clock=clock)
    admission.check_streams(settings, streams)
    streams.opened()
    with pytest.raises(Overloaded) as many:
        admission.check_streams(settings, streams)
    assert "MAX_OPEN_STREAMS" in many.value.message and many.value.headers == {"Retry-After": "60"}


def test_queue_events_keep_millisecond_times_in_their_headers() -> None:
    event = QueueEvent(LEFT, "s", at=1_796_173_999.123)
    headers = event.headers()
    assert isinstance(headers["at_ms"], int)  # a float header would be rounded to 32 bits
    assert QueueEvent.from_headers(headers) == event
    assert QueueEvent.from_headers({"session_id": "s"}) is None
    assert QueueEvent.from_headers({"queue_event": "left", "session_id": "s", "at_ms": True}).at == 0.0


def test_before_a_drain_rate_is_measured_a_refusal_promises_no_early_slot() -> None:
    """A fresh stack has seen one task leave a moment ago: that is no rate of one a second. A
    refusal then names the ceiling; once two have left five seconds apart, five seconds."""
    settings = APISettings(max_queued_tasks=1, retry_after_max_s=60)
    clock = Clock()
    queue = tracker(clock)
    queue.apply(QueueEvent(QUEUED, "first"))
    queue.apply(QueueEvent(LEFT, "first", at=clock.now))
    queue.apply(QueueEvent(QUEUED, "waiting"))
    clock.now += 0.2
    with pytest.raises(Overloaded) as fresh:
        admission.check_queue(settings, queue)
    assert fresh.value.headers == {"Retry-After": "60"}
    clock.now += 4.8
    queue.apply(QueueEvent(QUEUED, "second"))
    queue.apply(QueueEvent(LEFT, "second", at=clock.now))
    with pytest.raises(Overloaded) as measured:
        admission.check_queue(settings, queue)
    assert measured.value.headers == {"Retry-After": "5"}
