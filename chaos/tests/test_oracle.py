"""The oracle on hand-made observations: each way a session can go wrong is caught."""

from __future__ import annotations

import json

import pytest
from llm_stream_mockllm.answer import expected_answer

from clients import SSEParser
from oracle import (
    CORRECT,
    DEADLINE,
    DROPPED,
    EOF,
    ERROR,
    FAILURE,
    OPEN_AFTER_FINAL,
    Event,
    Post,
    Read,
    Session,
    judge,
    refusal_problem,
    tally,
)

PROMPT = "oracle test [[mock:tokens=12]]"
EXPECTED = expected_answer(PROMPT, 12)


def chunk(text: str, end: int) -> Event:
    return end, None, json.dumps({"chunk": text}).encode()


def done(at: int) -> Event:
    return at, None, b'{"type": "done"}'


def message(event_id: int | None, data: bytes) -> Event:
    return event_id, None, data


QUEUED = b'{"type": "queued", "position": 2, "eta_s": 1.0}'


def sse(*reads: Read) -> Session:
    return Session("t", "sse", "sid-1", PROMPT, EXPECTED, "http://a", 0.0, list(reads))


def whole(cut: int = 10) -> list[Event]:
    return [chunk(EXPECTED[:cut], cut), chunk(EXPECTED[cut:], len(EXPECTED)), done(len(EXPECTED) + 1)]


def test_an_exact_answer_with_its_done_is_correct() -> None:
    for cut in (1, 3, 10):
        assert judge(sse(Read("http://a", None, 200, whole(cut), EOF))).outcome == CORRECT


def test_a_resume_after_a_drop_that_continues_at_its_id_is_correct() -> None:
    first = Read("http://a", None, 200, [chunk(EXPECTED[:10], 10)], DROPPED, "reset")
    rest = Read("http://b", 10, 200, [chunk(EXPECTED[10:], len(EXPECTED)), done(len(EXPECTED) + 1)], EOF)
    verdict = judge(sse(first, rest))
    assert verdict.outcome == CORRECT and verdict.resumed


def test_a_refused_reconnection_is_tried_again() -> None:
    first = Read("http://a", None, 200, [chunk(EXPECTED[:10], 10)], DROPPED)
    refused = Read("http://a", 10, None, [], DROPPED, "connection refused")
    rest = Read("http://b", 10, 200, [chunk(EXPECTED[10:], len(EXPECTED)), done(len(EXPECTED) + 1)], EOF)
    assert judge(sse(first, refused, rest)).outcome == CORRECT


@pytest.mark.parametrize(
    ("events", "end", "what"),
    [
        ([chunk(EXPECTED[:10], 10), chunk(EXPECTED[12:], len(EXPECTED))], EOF, "a gap"),
        ([chunk(EXPECTED[:10], 10), chunk(EXPECTED[8:], len(EXPECTED) + 2)], EOF, "wrong text"),
        ([chunk(EXPECTED[:10], 10), chunk(EXPECTED[:10], 10)], EOF, "a duplicate"),
        ([chunk("x" + EXPECTED[1:10], 10)], EOF, "wrong text at position 0"),
        ([chunk(EXPECTED[:10], 10)], EOF, "closed the stream without a final event"),
        ([chunk(EXPECTED[:10], 10)], DEADLINE, "hang"),
        ([chunk(EXPECTED[:10], 10), message(None, b"not json")], EOF, "non-JSON"),
        ([chunk(EXPECTED[:10], 10), done(11)], EOF, "done after 10 of"),
        ([*whole(), chunk("more", 999)], EOF, "event after the final one"),
        ([chunk(EXPECTED[:10], 10), message(11, b'{"type": "cancelled"}')], EOF, "nobody cancelled"),
        ([message(None, json.dumps({"chunk": EXPECTED}).encode())], EOF, "without an id"),
        ([(1, "queued", QUEUED), *whole()], EOF, "news is never replayed"),
        ([message(None, QUEUED), *whole()], EOF, "sent as a message"),
        ([(None, "surprise", QUEUED), *whole()], EOF, "unknown event 'surprise'"),
        ([message(None, b'{"type": "surprise"}'), *whole()], EOF, "unknown event"),
        (whole(), OPEN_AFTER_FINAL, "kept the stream open"),
    ],
)
def test_what_the_oracle_refuses(events: list[Event], end: str, what: str) -> None:
    verdict = judge(sse(Read("http://a", None, 200, events, end)))
    assert verdict.outcome == FAILURE
    assert what in verdict.detail, verdict.detail


def test_a_resume_from_the_wrong_position_is_a_failure() -> None:
    first = Read("http://a", None, 200, [chunk(EXPECTED[:10], 10)], DROPPED)
    rest = Read("http://b", 8, 200, [chunk(EXPECTED[8:], len(EXPECTED)), done(len(EXPECTED) + 1)], EOF)
    assert "resumed with Last-Event-ID 8, held 10" in judge(sse(first, rest)).detail


def test_a_drop_that_is_never_resumed_is_a_failure() -> None:
    verdict = judge(sse(Read("http://a", None, 200, [chunk(EXPECTED[:10], 10)], DROPPED, "reset")))
    assert verdict.outcome == FAILURE and "no final event" in verdict.detail


def test_a_resume_answered_404_is_a_failure() -> None:
    first = Read("http://a", None, 200, [chunk(EXPECTED[:10], 10)], DROPPED)
    rest = Read("http://b", 10, 404, [], EOF, '{"error": "not_found"}')
    assert "GET answered 404" in judge(sse(first, rest)).detail


def test_queue_news_as_a_named_event_without_an_id_is_skipped() -> None:
    events = [(None, "queued", QUEUED), *whole()]
    assert judge(sse(Read("http://a", None, 200, events, EOF))).outcome == CORRECT


def test_an_error_event_is_an_explicit_end_counted_apart() -> None:
    events = [chunk(EXPECTED[:10], 10), message(11, b'{"type": "error", "error": "upstream failed"}')]
    verdict = judge(sse(Read("http://a", None, 200, events, EOF)))
    assert (verdict.outcome, verdict.detail) == (ERROR, "upstream failed")
    timeout = [message(None, b'{"type": "error", "error": "no answer event for 300s"}')]
    assert judge(sse(Read("http://a", None, 200, timeout, EOF))).detail.startswith("reader timeout")


def sync(body: str, end: str = EOF) -> Session:
    return Session("t", "sync", "sid-2", PROMPT, EXPECTED, "http://a", 0.0, body=body.encode(), end=end)


def test_sync_bodies() -> None:
    assert judge(sync(EXPECTED)).outcome == CORRECT
    assert judge(sync(EXPECTED[:5] + "\n[error] LLM error: boom\n")).outcome == ERROR
    assert judge(sync("\n[error] LLM error: boom\n")).detail == "LLM error: boom"
    assert "wrong text before the error" in judge(sync("nope\n[error] x\n")).detail
    assert "wrong text" in judge(sync(EXPECTED[:-1])).detail
    assert "connection broke" in judge(sync(EXPECTED[:4], DROPPED)).detail
    assert "hang" in judge(sync(EXPECTED[:4], DEADLINE)).detail
    assert "nobody cancelled" in judge(sync(EXPECTED[:4] + "\n[cancelled]\n")).detail
    bad = Session("t", "sync", "s", PROMPT, EXPECTED, "u", 0.0, body=b"\xff", end=EOF)
    assert "not UTF-8" in judge(bad).detail


def openai_session(
    pieces: list[str], finish: str | None = "stop", error: str | None = None, end: str = EOF
) -> Session:
    return Session(
        "t", "openai", "sid-3", PROMPT, EXPECTED, "http://a", 0.0, pieces=pieces, finish_reason=finish,
        error=error, end=end,
    )


def test_openai_streams() -> None:
    assert judge(openai_session([EXPECTED[:3], EXPECTED[3:]])).outcome == CORRECT
    assert "without a finish_reason" in judge(openai_session([EXPECTED], None)).detail
    assert judge(openai_session([EXPECTED[:3]], None, "boom")).outcome == ERROR
    assert "wrong text" in judge(openai_session(["zz"])).detail
    assert "finish_reason 'stop' after" in judge(openai_session([EXPECTED[:3]])).detail
    assert "connection broke" in judge(openai_session([EXPECTED[:3]], None, end=DROPPED)).detail


def post(status: int | None, retry_after: str | None = "5", code: str | None = "broker_unavailable") -> Post:
    return Post("t", "sse", "http://a", 0.0, status, retry_after, code, "body")


def test_refusals_need_a_status_a_retry_after_and_a_code() -> None:
    assert refusal_problem(post(503)) is None
    assert refusal_problem(post(429, code="rate_limited")) is None
    assert "without a Retry-After" in refusal_problem(post(503, None))  # type: ignore[operator]
    assert "without a Retry-After" in refusal_problem(post(503, "²"))  # type: ignore[operator]
    assert "without an error code" in refusal_problem(post(503, code=None))  # type: ignore[operator]
    assert "answered 500" in refusal_problem(post(500))  # type: ignore[operator]
    assert "got no answer" in refusal_problem(post(None))  # type: ignore[operator]


def test_tally_counts_each_outcome() -> None:
    good = sse(Read("http://a", None, 200, whole(), EOF))
    failed = sse(Read("http://a", None, 200, [chunk(EXPECTED[:10], 10)], EOF))
    errored = sync("\n[error] boom\n")
    counts = tally("t", [good, failed, errored], [post(503), post(500)])
    assert (counts.accepted, counts.correct, counts.error_count) == (3, 1, 1)
    assert len(counts.failures) == 2  # the truncated stream and the 500
    assert counts.refused == {"503 broker_unavailable": 1}


def test_sse_parser_keeps_ids_across_any_split() -> None:
    stream = (
        b': ping\r\n\r\nid: 4\r\ndata: {"chunk": "caf\xc3\xa9"}\r\n\r\n'
        b'event: queued\ndata: {"type": "queued"}\n\nid: 5\ndata: {"type": "done"}\n\n'
    )
    for size in (1, 2, 5, len(stream)):
        parser = SSEParser()
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i : i + size])
        assert events == [
            (4, None, '{"chunk": "café"}'.encode()),
            (None, "queued", b'{"type": "queued"}'),
            (5, None, b'{"type": "done"}'),
        ]
