"""The session hub: merging, resuming and bounding answers."""

from __future__ import annotations

import orjson
import pytest
from llm_stream_api.hub import DIVERGED, SessionHub, event_data
from mqcommon.schemas import StreamEvent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_hub(clock: Clock | None = None, **kw) -> SessionHub:
    defaults = {"ttl_s": 60, "max_sessions": 100, "max_bytes": 10_000}
    return SessionHub(**{**defaults, **kw}, clock=clock or Clock())


def chunk(text: str, offset: int, sid: str = "s1", attempt: int = 1) -> StreamEvent:
    return StreamEvent(session_id=sid, kind="chunk", offset=offset, text=text, attempt=attempt)


def done(offset: int, sid: str = "s1") -> StreamEvent:
    return StreamEvent(session_id=sid, kind="done", offset=offset)


def datas(hub: SessionHub, sid: str = "s1") -> list[dict]:
    return [orjson.loads(event_data(e)) for e in hub.session(sid).events]


def test_chunks_then_done_make_numbered_events() -> None:
    hub = make_hub()
    for event in (chunk("Hel", 0), chunk("lo", 3), done(5)):
        hub.apply(event)
    assert datas(hub) == [{"chunk": "Hel"}, {"chunk": "lo"}, {"type": "done"}]
    session = hub.session("s1")
    assert session.ended and session.text == "Hello"


def test_redelivered_identical_answer_adds_nothing_but_its_new_tail() -> None:
    hub = make_hub()
    hub.apply(chunk("Hel", 0))
    hub.apply(chunk("lo w", 3))
    # A second attempt regenerates from offset 0 with different chunk boundaries.
    for event in (chunk("He", 0, attempt=2), chunk("llo wor", 2, attempt=2), chunk("ld", 9, attempt=2)):
        hub.apply(event)
    hub.apply(done(11))
    assert [d.get("chunk") for d in datas(hub)] == ["Hel", "lo w", "or", "ld", None]
    assert hub.session("s1").text == "Hello world"


def test_regenerated_answer_that_differs_ends_with_an_error() -> None:
    hub = make_hub()
    hub.apply(chunk("Hello", 0))
    hub.apply(chunk("Howdy", 0, attempt=2))
    assert datas(hub)[-1] == {"type": "error", "error": DIVERGED}
    hub.apply(chunk(" more", 5))
    assert len(hub.session("s1").events) == 2  # nothing after the end


def test_done_beyond_what_was_received_waits_for_the_redelivery() -> None:
    hub = make_hub()
    hub.apply(chunk("Hel", 0))
    hub.apply(chunk("world", 6))  # gap: the batch with "lo " was lost
    hub.apply(done(11))
    assert not hub.session("s1").ended
    hub.apply(chunk("Hello world", 0, attempt=2))
    hub.apply(done(11))
    assert hub.session("s1").text == "Hello world" and hub.session("s1").ended


def test_shorter_final_answer_is_a_divergence() -> None:
    hub = make_hub()
    hub.apply(chunk("Hello", 0))
    hub.apply(done(3))
    assert datas(hub)[-1]["type"] == "error"


def test_worker_error_ends_the_session() -> None:
    hub = make_hub()
    hub.apply(StreamEvent(session_id="s1", kind="error", error="LLM error: boom"))
    assert datas(hub) == [{"type": "error", "error": "LLM error: boom"}]


def test_two_hubs_fed_the_same_stream_agree_on_every_id() -> None:
    stream = [
        chunk("a", 0, "x"), chunk("b", 0, "y"), chunk("bc", 1, "x"), chunk("b", 0, "x", 2),
        chunk("abcd", 0, "x", 2), done(1, "y"), done(4, "x"),
    ]
    first, second = make_hub(), make_hub()
    for event in stream:
        first.apply(event)
        second.apply(event)
    for sid in ("x", "y"):
        assert first.session(sid).events == second.session(sid).events


def test_accepted_and_started_make_a_session_known_without_events() -> None:
    hub = make_hub()
    assert not hub.session("s1").known
    hub.apply(StreamEvent(session_id="s1", kind="accepted", at=123.0))
    assert hub.session("s1").known and hub.session("s1").accepted_at == 123.0
    assert hub.session("s1").events == []


def test_answer_larger_than_the_limit_ends_with_an_error() -> None:
    hub = make_hub(max_bytes=10)
    hub.apply(chunk("0123456789", 0))
    hub.apply(chunk("X", 10))
    assert datas(hub)[-1] == {"type": "error", "error": "answer exceeds SESSION_MAX_BYTES"}


def test_sweep_forgets_idle_sessions_but_not_ones_being_read() -> None:
    clock = Clock()
    hub = make_hub(clock, ttl_s=60)
    hub.apply(chunk("a", 0, "old"))
    hub.apply(chunk("a", 0, "read"))
    hub.session("read").readers = 1
    clock.now += 61
    hub.apply(chunk("a", 0, "new"))
    assert hub.sweep() == 1
    assert hub.get("old") is None and hub.get("read") is not None and hub.get("new") is not None


def test_session_count_is_bounded() -> None:
    hub = make_hub(max_sessions=100)
    for i in range(150):
        hub.apply(chunk("a", 0, f"s{i}"))
    assert len(hub) == 100
    assert hub.get("s0") is None and hub.get("s149") is not None


@pytest.mark.parametrize("kind", ["accepted", "started"])
async def test_waiters_wake_on_markers(kind: str) -> None:
    import asyncio

    hub = make_hub()
    session = hub.session("s1")
    waiter = asyncio.create_task(session.wait(5))
    await asyncio.sleep(0)
    hub.apply(StreamEvent(session_id="s1", kind=kind))
    assert await asyncio.wait_for(waiter, 1) is True
