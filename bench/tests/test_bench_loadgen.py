from __future__ import annotations

import pytest
from llm_stream_mockllm.answer import expected_answer
from llm_stream_mockllm.embed import serve_in_background
from llm_stream_mockllm.settings import Settings

import loadgen
import report


def test_sse_parser_reassembles_events_split_anywhere() -> None:
    stream = (
        b': ping\r\n\r\nid: 1\r\ndata: {"chunk": "caf\xc3\xa9"}\r\n\r\n'
        b'id: 2\ndata: first\ndata: second\n\nretry: 5\nevent: x\ndata:{"type": "done"}\n\n'
    )
    for size in (1, 2, 3, 7, len(stream)):
        parser = loadgen.SSEParser()
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i : i + size])
        assert events == ['{"chunk": "café"}'.encode(), b"first\nsecond", b'{"type": "done"}']


def test_percentile() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([3.0], 99) == 3.0
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert report.percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)


def test_targets() -> None:
    assert report.Target("s", "ratio", 0.96, 0.95, at_least=True).met
    assert not report.Target("s", "ms", 11.0, 10).met
    assert not report.Target("s", "ms", None, 10).met


async def test_direct_closed_loop_checks_every_answer() -> None:
    settings = Settings(port=0, ttft_ms=5, tokens=8, tps=1000)
    async with serve_in_background(settings) as url, loadgen.new_session(50) as session:
        prompts = [f"bench test {i}" for i in range(40)]
        run = await loadgen.closed_loop(
            session, loadgen.direct(url, 8), prompts, 10, request_timeout=10, deadline=30, ramp=0.05
        )
        assert [r.error for r in run.results] == [None] * 40
        assert all(r.correct for r in run.results)
        assert all(r.ttft is not None and r.total is not None and r.ttft <= r.total for r in run.results)

        wrong = await loadgen.guarded(session, loadgen.direct(url, 7), "bench test", 10)
        assert wrong.ok and not wrong.correct
        failed = await loadgen.guarded(session, loadgen.direct(url, 8), "x [[mock:fail=503]]", 10)
        assert failed.error is not None and failed.error.startswith("HTTP 503")
        cut = await loadgen.guarded(session, loadgen.direct(url, 8), "x [[mock:fail_after=2]]", 10)
        assert not cut.ok and cut.error

    summary = report.summarise("direct C=10", "direct", 10, run.results, run.wall, 8, {"mock": 0.1})
    assert summary["correct"] == 40 and summary["errors"] == 0
    assert summary["tokens_delivered"] == 320
    assert expected_answer("bench test 0", 8).startswith("Echo-")
