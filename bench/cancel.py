"""Cancel latency: how soon a cancel closes the LLM's stream, and that a queued one never reaches it.

A stack of its own (``bench.<run id>.cancel.*``): one API process and one worker whose
``WORKER_CONCURRENCY`` is ``--cancel-running``, on the run's mock LLM.

1. ``--cancel-running`` sessions are queued (``POST /chat/async``) with answers long enough to
   still be running (``ANSWER_DIRECTIVES``: 400 tokens at 20 tokens/s), and each stream is read.
   They fill the worker.
2. ``--cancel-queued`` more are queued: with the worker full, their tasks wait in the queue.
   Each is cancelled at once (``DELETE /sessions/{id}``, expected 202 ``cancelling``).
3. Each running session is cancelled at a random moment, uniform over ``--cancel-spread``
   seconds after its first chunk. The worker then takes the queued tasks, and drops them.
4. Every stream is read to its end (``cancelled`` expected), then the mock's
   ``GET /debug/streams`` says when it saw each running stream's connection close
   (``closed_early``, ``time.time()`` of the mock) and which prompts it was ever sent.

The figure is, per running session, the mock's close time minus ``time.time()`` just before
the cancel request was sent: both clocks are this machine's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import psutil

import loadgen
from context import BenchRun
from stack import CpuMeter, Service, background_cores, broker_names, cpu_seconds, free_port

ANSWER_DIRECTIVES = "[[mock:tokens=400]] [[mock:tps=20]]"
"""20 s answers: still running whenever the cancel comes."""
LIMIT_S = 1.0
"""The target: the LLM sees its connection closed within this long after the cancel request."""
START_TIMEOUT_S = 30.0
END_TIMEOUT_S = 20.0
CLOSE_POLL_S = 0.1
CLOSE_WAIT_S = 10.0


@dataclass(slots=True)
class Cancelled:
    """One session of the scenario; wall-clock times (``time.time()``)."""

    prompt: str
    running: bool
    """Cancelled while its generation ran (else: while its task was queued)."""
    session_id: str | None = None
    first_chunk_at: float | None = None
    cancel_sent_at: float | None = None
    cancel_answered_at: float | None = None
    cancel_status: str | None = None
    """``<HTTP status> <body status>``, e.g. ``200 cancelled`` or ``202 cancelling``."""
    stream_end: str | None = None
    """The stream's last event type (``cancelled`` expected), or what went wrong."""
    stream_end_at: float | None = None
    upstream_closed_at: float | None = None
    reached_llm: bool | None = None
    error: str | None = None


def distribution_ms(values: list[float]) -> dict[str, float | None]:
    from report import percentile

    return {
        name: None if (v := percentile(values, q)) is None else round(v * 1000, 1)
        for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
    }


def summarise(sessions: list[Cancelled], limit_s: float = LIMIT_S) -> dict[str, Any]:
    """The figures of a run; pure, so a unit test can check them."""
    running = [s for s in sessions if s.running]
    queued = [s for s in sessions if not s.running]
    closes = [
        s.upstream_closed_at - s.cancel_sent_at
        for s in running
        if s.upstream_closed_at is not None and s.cancel_sent_at is not None
    ]
    def answered(group: list[Cancelled]) -> list[float]:
        return [
            s.cancel_answered_at - s.cancel_sent_at
            for s in group
            if s.cancel_answered_at is not None and s.cancel_sent_at is not None
        ]

    ends = [
        s.stream_end_at - s.cancel_sent_at
        for s in running
        if s.stream_end == "cancelled" and s.stream_end_at is not None and s.cancel_sent_at is not None
    ]
    return {
        "running": len(running),
        "queued": len(queued),
        "limit_ms": round(limit_s * 1000),
        "upstream_close_ms": distribution_ms(closes),
        "upstream_closed_seen": len(closes),
        "within_limit": sum(1 for c in closes if c <= limit_s),
        "cancel_answer_ms": distribution_ms(answered(running)),
        "queued_cancel_answer_ms": distribution_ms(answered(queued)),
        "stream_end_ms": distribution_ms(ends),
        "cancel_statuses": {
            "running": dict(Counter(s.cancel_status or "not sent" for s in running)),
            "queued": dict(Counter(s.cancel_status or "not sent" for s in queued)),
        },
        "stream_ends": dict(Counter(s.stream_end or "none" for s in sessions)),
        "ended_cancelled": sum(1 for s in sessions if s.stream_end == "cancelled"),
        "queued_reached_llm": sum(1 for s in queued if s.reached_llm),
        "running_reached_llm": sum(1 for s in running if s.reached_llm),
        "errors": dict(Counter(s.error for s in sessions if s.error)),
    }


def apply_mock_report(sessions: list[Cancelled], report: dict[str, Any]) -> None:
    """What the mock saw: each prompt it was sent, and when it saw a stream closed early."""
    closed = {entry["prompt"]: entry["at"] for entry in report.get("closed_early", [])}
    requested = set(report.get("requested", []))
    for s in sessions:
        s.reached_llm = s.prompt in requested
        s.upstream_closed_at = closed.get(s.prompt)


async def read_to_end(
    session: aiohttp.ClientSession, url: str, one: Cancelled, started: asyncio.Event
) -> None:
    """Read a stream to its last event; set ``started`` at its first chunk."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S + END_TIMEOUT_S + 30):
            async with session.get(url, headers=loadgen.SSE_HEADERS) as response:
                if response.status != 200:
                    one.stream_end = f"HTTP {response.status}"
                    return
                parser = loadgen.SSEParser()
                async for chunk in response.content.iter_any():
                    for data in parser.feed(chunk):
                        event = orjson.loads(data)
                        if event.get("chunk"):
                            if one.first_chunk_at is None:
                                one.first_chunk_at = time.time()
                                started.set()
                        elif (kind := event.get("type")) in ("done", "error", "cancelled"):
                            one.stream_end, one.stream_end_at = kind, time.time()
                            return
                one.stream_end = "ended without a final event"
    except TimeoutError:
        one.stream_end = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        one.stream_end = f"{type(exc).__name__}"
        one.error = f"stream: {type(exc).__name__}: {str(exc)[:80]}"
    finally:
        started.set()  # nobody waits forever for a stream that failed


async def cancel(session: aiohttp.ClientSession, api: str, one: Cancelled) -> None:
    one.cancel_sent_at = time.time()
    try:
        async with session.delete(f"{api}/sessions/{one.session_id}") as response:
            body = orjson.loads(await response.read()) if response.status in (200, 202) else {}
            one.cancel_answered_at = time.time()
            one.cancel_status = f"{response.status} {body.get('status', '')}".strip()
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        one.error = f"cancel: {type(exc).__name__}: {str(exc)[:80]}"


async def queue(session: aiohttp.ClientSession, api: str, one: Cancelled) -> bool:
    async with session.post(
        f"{api}/chat/async", data=orjson.dumps({"message": one.prompt}), headers=loadgen.JSON_HEADERS
    ) as response:
        if response.status != 200:
            one.error = f"POST: HTTP {response.status}"
            return False
        one.session_id = orjson.loads(await response.read())["session_id"]
    return True


class CancelPart:
    def __init__(self, bench: BenchRun) -> None:
        self.bench = bench
        self.args = bench.args
        self.stack = bench.stack
        self.rng = random.Random(self.args.cancel_seed)

    async def start_stack(self) -> tuple[str, list[Service]]:
        names = broker_names(f"{self.bench.run_id}.cancel")
        if names not in self.stack.topologies:
            self.stack.topologies.append(names)
        common = {
            "RABBIT_MQ": self.args.amqp_url,
            "LOG_LEVEL": self.args.log_level,
            "OPENAI_BASE_URL": f"{self.bench.mock_url}/v1",
            "OPENAI_API_KEY": "mock",
            **names,
        }
        port, metrics_port = free_port(), free_port()
        api = self.stack.start(
            "cancel:api", "llm-stream-api",
            {**common, "HOST": "127.0.0.1", "PORT": str(port), "UVICORN_WORKERS": "1"},
            f"http://127.0.0.1:{port}/health/full",
        )
        worker = self.stack.start(
            "cancel:worker", "llm-stream-worker",
            {
                **common,
                # Full with the running sessions: the queued ones wait in the broker.
                "WORKER_CONCURRENCY": str(self.args.cancel_running),
                "METRICS_HOST": "127.0.0.1",
                "METRICS_PORT": str(metrics_port),
                "SHUTDOWN_GRACE_S": "2",
            },
            f"http://127.0.0.1:{metrics_port}/health",
        )
        services = [api, worker]
        await self.stack.wait_ready(services, timeout=60)
        return f"http://127.0.0.1:{port}", services

    async def run(self) -> dict[str, Any]:
        load_before = [round(x, 2) for x in psutil.getloadavg()]
        api, services = await self.start_stack()
        tag = f"bench cancel {self.bench.run_id}"
        running = [
            Cancelled(f"{tag} running {i} {ANSWER_DIRECTIVES}", True) for i in range(self.args.cancel_running)
        ]
        queued = [
            Cancelled(f"{tag} queued {i} {ANSWER_DIRECTIVES}", False) for i in range(self.args.cancel_queued)
        ]
        sessions = [*running, *queued]
        meters = {
            "api": CpuMeter.of_pids([services[0].popen.pid]),
            "worker": CpuMeter.of_pids([services[1].popen.pid]),
            **{k: v for k, v in self.bench.meters.items() if k in ("mock", "broker", "loadgen")},
        }
        cpu_before = cpu_seconds(meters)
        began = time.perf_counter()
        try:
            async with loadgen.new_session(2 * len(sessions) + 10) as session:
                readers = await self._cancel_all(session, api, running, queued)
                await asyncio.gather(*readers)
                await self._wait_for_closes(session, running)
                async with session.get(f"{self.bench.mock_url}/debug/streams") as r:
                    apply_mock_report(sessions, orjson.loads(await r.read()))
            for service in services:
                if service.popen.poll() is not None:
                    raise RuntimeError(
                        f"{service.name} exited during the cancel scenario:\n{service.log_tail()}"
                    )
        finally:
            self.stack.stop(services)
        wall = time.perf_counter() - began
        summary = summarise(sessions)
        summary.update(
            spread_s=self.args.cancel_spread,
            seed=self.args.cancel_seed,
            wall_s=round(wall, 2),
            load_average_before=load_before,
            background_cores=background_cores(meters, cpu_before, wall),
        )
        return summary

    async def _cancel_all(
        self, session: aiohttp.ClientSession, api: str, running: list[Cancelled], queued: list[Cancelled]
    ) -> list[asyncio.Task[None]]:
        readers: list[asyncio.Task[None]] = []
        starts: list[asyncio.Event] = []
        for one in running:
            if await queue(session, api, one):
                starts.append(asyncio.Event())
                readers.append(asyncio.create_task(
                    read_to_end(session, f"{api}/stream/{one.session_id}", one, starts[-1])
                ))
        async with asyncio.timeout(START_TIMEOUT_S):
            await asyncio.gather(*(started.wait() for started in starts))
        # Every slot of the worker is taken: these wait in the queue, and are cancelled there
        # (each cancel answers 202 after CANCEL_WAIT_S: they are sent together).
        for one in queued:
            if await queue(session, api, one):
                readers.append(asyncio.create_task(
                    read_to_end(session, f"{api}/stream/{one.session_id}", one, asyncio.Event())
                ))
        await asyncio.gather(*(cancel(session, api, one) for one in queued if one.session_id))

        async def later(one: Cancelled, delay: float) -> None:
            await asyncio.sleep(delay)
            await cancel(session, api, one)

        await asyncio.gather(*(
            later(one, self.rng.uniform(0, self.args.cancel_spread))
            for one in running if one.session_id and one.first_chunk_at is not None
        ))
        return readers

    async def _wait_for_closes(self, session: aiohttp.ClientSession, running: list[Cancelled]) -> None:
        """Until the mock has seen every running stream closed (or ``CLOSE_WAIT_S``)."""
        wanted = {one.prompt for one in running if one.cancel_sent_at is not None}
        deadline = time.monotonic() + CLOSE_WAIT_S
        while time.monotonic() < deadline:
            async with session.get(f"{self.bench.mock_url}/debug/streams") as r:
                report = orjson.loads(await r.read())
            if wanted <= {entry["prompt"] for entry in report.get("closed_early", [])}:
                return
            await asyncio.sleep(CLOSE_POLL_S)

