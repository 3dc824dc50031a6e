"""Readers of the hub: resume by id, timeouts for unknown and silent sessions."""

from __future__ import annotations

import asyncio

import orjson
from llm_stream_api.hub import SessionHub, event_data
from llm_stream_api.settings import APISettings
from llm_stream_api.streaming import follow, sse_body, text_body
from mqcommon.schemas import StreamEvent


def settings(**kw) -> APISettings:
    return APISettings(**{"stream_wait_timeout_s": 0.2, "stream_idle_timeout_s": 0.3, **kw})


def hub() -> SessionHub:
    return SessionHub(ttl_s=60, max_sessions=1000, max_bytes=100_000)


def feed(h: SessionHub, sid: str, parts: list[str], finish: bool = True) -> None:
    offset = 0
    for part in parts:
        h.apply(StreamEvent(session_id=sid, kind="chunk", offset=offset, text=part))
        offset += len(part)
    if finish:
        h.apply(StreamEvent(session_id=sid, kind="done", offset=offset))


async def collect(it) -> list:
    return [item async for batch in it for item in batch]


async def test_resume_after_an_id_continues_with_the_next_event() -> None:
    h = hub()
    feed(h, "s", ["a", "b", "c"])
    items = await collect(follow(h, "s", 2, settings()))
    assert [i.id for i in items] == [3, 4]
    assert [i.event[0] for i in items] == ["chunk", "done"]


async def test_reader_waits_for_events_that_arrive_later() -> None:
    h = hub()
    reader = asyncio.create_task(collect(follow(h, "s", 0, settings(stream_wait_timeout_s=5))))
    await asyncio.sleep(0.05)
    feed(h, "s", ["x", "y"])
    items = await asyncio.wait_for(reader, 2)
    assert [i.event[1] for i in items[:2]] == ["x", "y"] and items[-1].event[0] == "done"


async def test_unknown_session_ends_with_a_not_found_error() -> None:
    items = await asyncio.wait_for(collect(follow(hub(), "ghost", 0, settings())), 2)
    assert len(items) == 1
    assert orjson.loads(event_data(items[0].event))["type"] == "error"
    assert "not found" in items[0].event[1]


async def test_known_but_silent_session_ends_with_an_idle_error() -> None:
    h = hub()
    h.apply(StreamEvent(session_id="s", kind="accepted"))
    feed(h, "s", ["a"], finish=False)
    items = await asyncio.wait_for(collect(follow(h, "s", 0, settings())), 2)
    assert [orjson.loads(event_data(i.event)).get("type") for i in items] == [None, "error"]
    assert items[-1].id == 2 and "no answer event" in items[-1].event[1]


async def test_reader_count_is_released() -> None:
    h = hub()
    feed(h, "s", ["a"])
    await collect(follow(h, "s", 0, settings()))
    assert h.session("s").readers == 0


async def test_sse_frames_carry_ids_and_json_data() -> None:
    h = hub()
    feed(h, "s", ["he", "llo"])
    body = b"".join([frame async for frame in sse_body(h, "s", 0, settings())])
    assert body == (
        b'id: 1\ndata: {"chunk":"he"}\n\n'
        b'id: 2\ndata: {"chunk":"llo"}\n\n'
        b'id: 3\ndata: {"type": "done"}\n\n'
    )
    for block in body.decode().strip().split("\n\n"):
        orjson.loads(block.split("data: ", 1)[1])


async def test_plain_text_body_is_the_answer_and_reports_errors_inline() -> None:
    h = hub()
    feed(h, "ok", ["Hello", " world"])
    text = b"".join([part async for part in text_body(h, "ok", settings(), 0.0)])
    assert text == b"Hello world"
    h.apply(StreamEvent(session_id="bad", kind="error", error="LLM error: nope"))
    text = b"".join([part async for part in text_body(h, "bad", settings(), 0.0)])
    assert text == b"\n[error] LLM error: nope\n"
