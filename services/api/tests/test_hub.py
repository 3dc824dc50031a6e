"""The session hub: merging frames of any boundaries, gaps, divergence, bounds."""

from __future__ import annotations

import asyncio

from llm_stream_api.sessions.hub import DIVERGED, TOO_LONG, SessionHub
from mqcommon.schemas import End, Frame, HistoryRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_hub(clock: Clock | None = None, **kw) -> SessionHub:
    defaults = {"ttl_s": 60, "max_sessions": 100, "max_bytes": 10_000}
    return SessionHub(**{**defaults, **kw}, clock=clock or Clock())


def text(offset: int, piece: str, sid: str = "s1") -> Frame:
    return Frame(sid, offset, piece)


def done(length: int, sid: str = "s1") -> Frame:
    return Frame(sid, length, "", end=End("done", length))


def held(sid: str = "s1", **kw) -> SessionHub:
    hub = make_hub(**kw)
    hub.accept(sid, 1.0, None)
    return hub


def test_frames_then_done_make_one_text() -> None:
    hub = held()
    for frame in (text(0, "Hel"), text(3, "lo"), done(5)):
        assert hub.apply(frame)
    session = hub.get("s1")
    assert session.text == "Hello" and session.end_kind == "done" and session.error is None


def test_frames_for_sessions_not_held_are_refused() -> None:
    hub = held()
    assert hub.apply(text(0, "x", sid="elsewhere")) is False
    assert hub.get("elsewhere") is None


def test_a_replay_and_a_redelivery_with_other_boundaries_add_only_their_new_tail() -> None:
    hub = held()
    hub.apply(text(0, "Hel"))
    hub.apply(text(3, "lo w"))
    for frame in (text(0, "He"), text(2, "llo wor"), text(9, "ld")):
        hub.apply(frame)
    hub.apply(done(11))
    assert hub.get("s1").text == "Hello world" and hub.get("s1").end_kind == "done"


def test_regenerated_text_that_differs_ends_with_an_error() -> None:
    hub = held()
    hub.apply(text(0, "Hello"))
    hub.apply(text(0, "Howdy"))
    session = hub.get("s1")
    assert session.end_kind == "error" and session.error == DIVERGED
    hub.apply(text(5, " more"))
    assert session.text == "Hello"


def test_a_gap_is_reported_and_nothing_is_applied_until_it_is_filled() -> None:
    hub = held()
    gaps: list[str] = []
    hub.on_gap = gaps.append
    hub.apply(text(0, "Hel"))
    hub.apply(text(6, "world"))  # "lo " was lost
    hub.apply(done(11))  # the end needs the missing text first
    assert gaps == ["s1", "s1"] and not hub.get("s1").ended
    hub.apply(text(0, "Hello world"))  # the replay
    hub.apply(done(11))
    assert hub.get("s1").text == "Hello world" and hub.get("s1").end_kind == "done"


def test_shorter_final_answer_is_a_divergence() -> None:
    hub = held()
    hub.apply(text(0, "Hello"))
    hub.apply(done(3))
    assert hub.get("s1").error == DIVERGED


def test_an_error_or_cancel_ends_the_session_whatever_was_held() -> None:
    hub = held()
    hub.apply(text(0, "partial"))
    hub.apply(Frame("s1", 0, "", end=End("error", 0, "LLM error: boom")))
    assert hub.get("s1").end_kind == "error" and hub.get("s1").error == "LLM error: boom"
    hub = held()
    hub.apply(Frame("s1", 0, "", end=End("cancelled", 0)))
    assert hub.get("s1").end_kind == "cancelled"


def test_two_replicas_with_different_deliveries_hold_the_same_text() -> None:
    live = [text(0, "a"), text(1, "bc"), text(3, "d"), done(4)]
    first, second = held(), held()
    for frame in live:
        first.apply(frame)
    second.apply(Frame("s1", 0, "abc"))  # a replay, then the live frames
    for frame in live[2:]:
        second.apply(frame)
    assert first.get("s1").text == second.get("s1").text == "abcd"
    assert first.get("s1").end_kind == second.get("s1").end_kind == "done"


def test_history_records_make_a_session_known_or_finished() -> None:
    hub = make_hub()
    hub.apply_record(HistoryRecord("accepted", "q", at=123.0))
    assert hub.get("q").known and hub.get("q").accepted_at == 123.0 and not hub.get("q").ended
    hub.apply_record(HistoryRecord("transcript", "t", text="all of it", end=End("done", 9)))
    assert hub.get("t").text == "all of it" and hub.get("t").end_kind == "done"


def test_answer_larger_than_the_limit_ends_with_an_error() -> None:
    hub = held(max_bytes=10)
    hub.apply(text(0, "0123456789"))
    hub.apply(text(10, "X"))
    assert hub.get("s1").error == TOO_LONG and hub.get("s1").text == "0123456789"


def test_a_buffered_answer_costs_about_its_text() -> None:
    import sys

    hub = held()
    piece = "word " * 4
    for i in range(250):  # 1,000 tokens of about five characters
        hub.apply(text(i * len(piece), piece))
    hub.apply(done(250 * len(piece)))
    session = hub.get("s1")
    size = sys.getsizeof(session) + sys.getsizeof(session.text)
    assert len(session.text) == 5000
    assert size < 2 * 5000 + 500


def test_sweep_forgets_idle_sessions_not_ones_being_read_and_unknown_ones_sooner() -> None:
    clock = Clock()
    hub = make_hub(clock, ttl_s=60, unknown_ttl_s=10)
    for sid in ("old", "read"):
        hub.accept(sid, 1.0, None)
    hub.session("ghost")
    hub.get("read").readers = 1
    clock.now += 11
    assert hub.sweep() == 1 and hub.get("ghost") is None
    clock.now += 50
    hub.accept("new", 2.0, None)
    assert hub.sweep() == 1
    assert hub.get("old") is None and hub.get("read") is not None and hub.get("new") is not None


def test_session_count_is_bounded() -> None:
    hub = make_hub(max_sessions=100)
    for i in range(150):
        hub.accept(f"s{i}", 1.0, None)
    assert len(hub) == 100
    assert hub.get("s0") is None and hub.get("s149") is not None


def test_presence_lists_what_is_read_and_what_is_tracked_unfinished() -> None:
    hub = held()
    hub.accept("finished", 1.0, None)
    hub.apply(done(0, sid="finished"))
    hub.session("ghost").tracked = True  # asked for, unknown, nobody reading: not listed
    hub.get("s1").readers = 1
    assert hub.served_sessions() == ["s1"]
    assert hub.tracked_sessions() == ["s1"]


async def test_waiters_wake_on_start_and_on_text() -> None:
    hub = held()
    session = hub.get("s1")
    waiter = asyncio.create_task(session.wait(5))
    await asyncio.sleep(0)
    hub.apply(Frame("s1", 0, "", started=True))
    assert await asyncio.wait_for(waiter, 1) is True and session.started


def test_typed_parts_merge_by_position_and_a_regeneration_with_other_parts_diverges() -> None:
    from mqcommon.schemas import End, Frame

    hub = SessionHub(ttl_s=60, max_sessions=10, max_bytes=10_000)
    hub.accept("s", 1.0, None)
    hub.apply(Frame("s", 0, "thinkc1", kinds=[("reasoning", 5), ("tool.0.id", 2)]))
    hub.apply(Frame("s", 5, "c1f{}", kinds=[("tool.0.id", 2), ("tool.0.name", 1), ("tool.0.args", 2)]))
    session = hub.get("s")
    assert session.text == "thinkc1f{}" and session.content == ""
    assert session.parts(6) == [("tool.0.id", "1"), ("tool.0.name", "f"), ("tool.0.args", "{}")]
    whole = [("reasoning", 5), ("tool.0.id", 2), ("tool.0.name", 1), ("tool.0.args", 2)]
    hub.apply(Frame("s", 0, "thinkc1f{}", kinds=whole, end=End("done", 10, finish="tool_calls")))
    assert session.end_kind == "done" and session.finish == "tool_calls"

    hub.accept("t", 1.0, None)
    hub.apply(Frame("t", 0, "abc"))
    hub.apply(Frame("t", 0, "abcd", kinds=[("reasoning", 4)]))  # the same characters, other parts
    assert hub.get("t").end_kind == "error"
