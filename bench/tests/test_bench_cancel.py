"""The cancel scenario's figures: latency from the mock's report, queued tasks, targets."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

import cancel
import report
import run


def running(i: int, sent: float, closed: float | None, end: str = "cancelled") -> cancel.Cancelled:
    return cancel.Cancelled(
        f"p{i}", True, session_id=f"s{i}", first_chunk_at=sent - 1, cancel_sent_at=sent,
        cancel_answered_at=sent + 0.01, cancel_status="200 cancelled", stream_end=end,
        stream_end_at=sent + 0.02, upstream_closed_at=closed, reached_llm=True,
    )


def test_latency_is_the_mocks_close_minus_the_cancel_request() -> None:
    sessions = [running(i, 100.0, 100.0 + i / 100) for i in range(101)]  # 0 .. 1000 ms
    sessions[-1].upstream_closed_at = 102.5  # one slow close: 2.5 s
    queued = cancel.Cancelled("q", False, cancel_status="202 cancelling", stream_end="cancelled",
                              cancel_sent_at=100.0, cancel_answered_at=102.0, reached_llm=False)

    summary = cancel.summarise([*sessions, queued])

    close = summary["upstream_close_ms"]
    assert close["p50"] == pytest.approx(500, abs=0.2) and close["max"] == 2500
    assert close["p50"] <= close["p95"] <= close["p99"] <= close["max"]
    assert summary["within_limit"] == 100 and summary["upstream_closed_seen"] == 101
    assert summary["queued_cancel_answer_ms"]["max"] == 2000
    assert summary["cancel_statuses"]["queued"] == {"202 cancelling": 1}
    assert summary["ended_cancelled"] == 102 and summary["queued_reached_llm"] == 0


def test_a_close_the_mock_never_saw_is_not_a_fast_one() -> None:
    summary = cancel.summarise([running(0, 10.0, 10.1), running(1, 10.0, None, end="done")])
    assert summary["upstream_closed_seen"] == 1 and summary["within_limit"] == 1
    targets = {t.what: t for t in report.cancel_targets(summary)}
    assert targets["upstream closed after the cancel p99 (ms)"].met
    assert not targets["running generations the LLM saw closed"].met
    assert not targets["streams that ended cancelled"].met


def test_the_mock_report_says_what_reached_the_llm() -> None:
    sessions = [cancel.Cancelled("run", True), cancel.Cancelled("wait", False)]
    cancel.apply_mock_report(sessions, {
        "requested": ["other", "run"], "closed_early": [{"prompt": "run", "at": 5.0}],
    })
    assert (sessions[0].reached_llm, sessions[0].upstream_closed_at) == (True, 5.0)
    assert (sessions[1].reached_llm, sessions[1].upstream_closed_at) == (False, None)
    summary = cancel.summarise(sessions)
    assert summary["queued_reached_llm"] == 0
    sessions[1].reached_llm = True
    assert not {t.what: t for t in report.cancel_targets(cancel.summarise(sessions))}[
        "queued tasks that reached the LLM"
    ].met


async def test_a_stream_is_read_to_its_cancelled_event() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b': ping\n\nid: 2\ndata: {"chunk": "hi"}\n\n')
        await asyncio.sleep(0.05)
        await response.write(b'id: 3\ndata: {"type": "cancelled"}\n\n')
        return response

    app = web.Application()
    app.router.add_get("/stream/s", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        one, started = cancel.Cancelled("p", True), asyncio.Event()
        async with cancel.loadgen.new_session(2) as session:
            await cancel.read_to_end(session, f"http://127.0.0.1:{port}/stream/s", one, started)
    finally:
        await runner.cleanup()
    assert started.is_set() and one.first_chunk_at is not None
    assert one.stream_end == "cancelled" and one.stream_end_at >= one.first_chunk_at


def test_only_cancel_runs_nothing_else() -> None:
    args = run.parse_args(["--only", "cancel", "--cancel-running", "5"])
    assert (args.modes, args.burst, args.concurrency, args.scale_out) == ([], 0, [], [])
    assert (args.cancel_running, args.cancel_queued, args.out) == (5, 20, "cancel")
    assert run.parse_args([]).cancel_running == 50  # part of the default run
    assert run.parse_args(["--target", "http://x"]).cancel_running == 0  # needs its own stack
    assert run.parse_args(["--only", "scale-out"]).cancel_running == 0


def test_markdown_has_the_cancel_section() -> None:
    summary = cancel.summarise([running(0, 10.0, 10.2)])
    summary.update(spread_s=2.0, load_average_before=[0.1, 0.2, 0.3], background_cores=0.05)
    text = report._cancel_markdown(summary)
    assert "## Cancel" in text
    assert any(line.startswith("| the LLM seeing its connection closed | 200.0 |") for line in text)
