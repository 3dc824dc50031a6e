"""Queue positions: the keeper's waiting line, what a replica learns of it, and the Retry-After
of admission control."""

from __future__ import annotations

import asyncio

import pytest
from llm_stream_api.broker.queue_keeper import RATE_WINDOW_S, WaitingLine
from llm_stream_api.broker.queue_positions import QueuePositions
from llm_stream_api.protocol.errors import Overloaded
from llm_stream_api.quota import admission
from llm_stream_api.sessions.hub import Session
from llm_stream_api.settings import APISettings
from mqcommon.schemas import LEFT, QUEUED, WITHDRAWN, Positions, QueueEvent, Watch, Watermark


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock | None = None) -> WaitingLine:
    return WaitingLine(clock=clock or Clock())


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


def test_the_line_knows_where_it_begins_in_the_log_and_answers_many_at_once() -> None:
    line = tracker()
    assert line.head == 0  # nothing read: the next offset
    for offset, sid in enumerate(("a", "b", "c")):
        line.apply(QueueEvent(QUEUED, sid, owner="k1" if sid == "b" else None), offset)
    line.apply(QueueEvent(LEFT, "a"), 3)
    assert line.head == 1 and line.left_total == 1
    assert line.where(["c", "b", "zz"]) == {"b": (1, "k1"), "c": (2, None), "zz": (None, None)}
    for sid in ("b", "c"):
        line.apply(QueueEvent(LEFT, sid))
    assert line.head == 4 and line.waiting == 0


class FakeBroker:
    """What ``QueuePositions`` uses of the connection, without a broker: watches are counted."""

    replica_id = "r1"
    channel = None
    connected = False

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send_soon(self, coroutine: object) -> None:
        self.sent.append(coroutine)
        coroutine.close()  # type: ignore[attr-defined]


async def test_a_replica_watches_only_while_a_reader_waits_and_learns_position_and_owner() -> None:
    watches: list[Watch] = []
    broker = FakeBroker()
    positions = QueuePositions(broker, hub=_Hub(), watch_locally=watches.append)  # type: ignore[arg-type]
    session = Session("b", 0.0)
    session.readers = 1
    positions.watch(session)
    await asyncio.sleep(0.02)
    assert watches == []  # no keeper known yet: sent with the first watermark
    positions.on_watermark(Watermark("r1", head=0, waiting=2, left=0, rate=0.5))
    assert watches[-1] == Watch("r1", ("b",)) and positions.waiting == 2
    woke = asyncio.create_task(session.wait(2))
    await asyncio.sleep(0)
    positions.on_positions(Positions("r1", 0.5, {"b": (2, "alice")}))
    assert await woke
    assert (session.queue_position, session.owner) == (2, "alice")
    assert positions.eta(2) == 4.0
    taken = Positions("r1", 0.5, {"b": (None, "alice")})
    positions.on_positions(taken)  # a worker took it: its first frame is on its way
    assert session.queue_position == 1
    session.started = True
    positions.on_positions(taken)
    assert session.queue_position is None
    session.readers = 0
    positions.unwatch(session)
    await asyncio.sleep(0.02)
    assert watches[-1] == Watch("r1", ())
    other = QueuePositions(broker, hub=_Hub(), watch_locally=watches.append)  # type: ignore[arg-type]
    other.on_watermark(Watermark("r2", head=0, waiting=0, left=0, rate=0.0))  # another replica keeps
    other.watch(session)
    await asyncio.sleep(0.02)
    assert broker.sent == []  # nothing waits: no position to learn, nothing sent
    other.on_watermark(Watermark("r2", head=0, waiting=1, left=0, rate=0.0))
    assert len(broker.sent) == 1  # a task waits: sent round the broker, to the keeper r2


class _Hub:
    def get(self, session_id: str) -> None:
        return None


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


async def test_the_keeper_answers_each_replica_only_what_changed_for_its_own_sessions() -> None:
    from llm_stream_api.broker.queue_keeper import QueueKeeper

    class Broker(FakeBroker):
        settings = APISettings(max_queued_tasks=100)

        def when_lost(self, callback: object) -> None:
            pass

    async def length() -> int:
        return 0

    keeper = QueueKeeper(Broker(), length)  # type: ignore[arg-type]
    keeper.active = True
    answers: list[Positions] = []
    keeper.deliver_locally = answers.append
    for offset, sid in enumerate(("a", "b", "c")):
        keeper.line.apply(QueueEvent(QUEUED, sid), offset)
    keeper.on_watch(Watch("r1", ("c",)))
    assert answers == [Positions("r1", 0.0, {"c": (3, None)})]
    keeper.line.apply(QueueEvent(LEFT, "b"), 3)  # behind nobody watched here but c: c moves up
    keeper._send_positions("r1")
    keeper._send_positions("r1")  # nothing changed since
    assert answers[1:] == [Positions("r1", 0.0, {"c": (2, None)})]
    assert keeper.watermark().waiting == 2 and keeper.watermark().head == 0
