"""Readers of the hub: positions as ids, resume, timeouts, the SSE and text bodies."""

from __future__ import annotations

import asyncio

import orjson
from llm_stream_api.quota.admission import StreamCount
from llm_stream_api.service.follow import follow
from llm_stream_api.service.streams import sse_body, text_body
from llm_stream_api.sessions.hub import SessionHub
from llm_stream_api.settings import APISettings
from mqcommon.schemas import End, Frame

STREAMS = StreamCount()


def settings(**kw) -> APISettings:
    return APISettings(**{"stream_wait_timeout_s": 0.2, "stream_idle_timeout_s": 0.3, **kw})


def hub() -> SessionHub:
    return SessionHub(ttl_s=60, max_sessions=1000, max_bytes=100_000)


class Discoveries:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, session) -> None:
        self.asked.append(session.id)
        session.tracked = True


def feed(h: SessionHub, sid: str, parts: list[str], finish: bool = True) -> None:
    h.accept(sid, 1.0, None)
    offset = 0
    for part in parts:
        h.apply(Frame(sid, offset, part))
        offset += len(part)
    if finish:
        h.apply(Frame(sid, offset, "", end=End("done", offset)))


async def collect(it) -> list:
    return [item async for item in it]


def parse_sse(raw: bytes) -> list[tuple[str | None, dict]]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("id"), orjson.loads(fields["data"])))
    return out


async def test_ids_are_positions_and_the_end_is_one_past_the_text() -> None:
    h = hub()
    feed(h, "s", ["ab", "cd"])
    raw = b"".join(await collect(sse_body(h, "s", 0, settings(), Discoveries(), streams=STREAMS)))
    assert parse_sse(raw) == [("4", {"chunk": "abcd"}), ("5", {"type": "done"})]


async def test_resume_at_any_position_continues_there() -> None:
    h = hub()
    feed(h, "s", ["ab", "cd"])
    pieces = await collect(follow(h, "s", 3, settings(), Discoveries()))
    assert [(p.position, p.text, p.kind) for p in pieces] == [(4, "d", None), (5, "", "done")]
    assert await collect(follow(h, "s", 5, settings(), Discoveries())) == []  # had the end


async def test_reader_waits_for_text_that_arrives_later() -> None:
    h = hub()
    h.accept("s", 1.0, None)
    reader = asyncio.create_task(collect(follow(h, "s", 0, settings(stream_wait_timeout_s=5), Discoveries())))
    await asyncio.sleep(0.05)
    h.apply(Frame("s", 0, "xy"))
    h.apply(Frame("s", 2, "", end=End("done", 2)))
    pieces = await asyncio.wait_for(reader, 2)
    assert "".join(p.text for p in pieces) == "xy" and pieces[-1].kind == "done"


async def test_a_session_this_replica_does_not_hold_is_asked_for() -> None:
    h = hub()
    discover = Discoveries()
    pieces = await asyncio.wait_for(collect(follow(h, "ghost", 0, settings(), discover)), 2)
    assert discover.asked[0] == "ghost"
    assert len(pieces) == 1 and pieces[0].kind == "timeout" and "not found" in pieces[0].error


async def test_known_but_silent_session_ends_with_an_idle_error() -> None:
    h = hub()
    h.accept("s", 1.0, None)
    pieces = await asyncio.wait_for(collect(follow(h, "s", 0, settings(), Discoveries())), 2)
    assert pieces[-1].kind == "timeout" and "no answer" in pieces[-1].error


async def test_a_timeout_event_has_no_id_so_a_resume_asks_again() -> None:
    raw = b"".join(await collect(sse_body(hub(), "ghost", 0, settings(), Discoveries(), streams=STREAMS)))
    [(event_id, data)] = parse_sse(raw)
    assert event_id is None and data["type"] == "error"


async def test_text_body_is_the_answer_and_ends_errors_with_a_line() -> None:
    h = hub()
    feed(h, "ok", ["Hel", "lo"])
    left: list[str] = []
    body = b"".join(await collect(
        text_body(h, "ok", settings(), 0.0, Discoveries(), left.append, streams=STREAMS)
    ))
    assert body == b"Hello"
    h.accept("bad", 1.0, None)
    h.apply(Frame("bad", 0, "", end=End("error", 0, "LLM error: nope")))
    body = b"".join(await collect(
        text_body(h, "bad", settings(), 0.0, Discoveries(), left.append, streams=STREAMS)
    ))
    assert body == b"\n[error] LLM error: nope\n"
    assert left == []  # both ended: nothing to cancel


async def test_a_text_body_left_before_the_end_cancels_its_generation() -> None:
    h = hub()
    feed(h, "s", ["Hel"], finish=False)
    left: list[str] = []
    config = settings(stream_idle_timeout_s=5)
    body = text_body(h, "s", config, 0.0, Discoveries(), left.append, streams=STREAMS)
    assert await body.__anext__() == b"Hel"
    await body.aclose()  # the client went away
    assert left == ["s"]
