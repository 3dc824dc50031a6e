"""What one API replica pays to be one: counted, not timed (docs/adr/0004).

Tasks run through two replicas (the keeper of the queue log, and another); a third replica
serves nobody. The broker's deliveries to that third replica
(``llmstream_broker_deliveries_total``, by source) must be bounded by its own timers (the
keeper's watermark, the workers' heartbeats) and not by the tasks, so the test runs at two
task counts and holds both to the same bound per second. A replica that serves one session
among the many pays for that session and its timers, whatever the others do. A change that
brings back a broadcast (every replica reading every task) fails here, on any machine.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .support.deployment import Deployment, prompt
from .support.metrics import Samples, scrape, wait_for_metric
from .support.processes import Service
from .support.sse import assert_complete, read_stream

pytestmark = pytest.mark.integration

DELIVERIES = "llmstream_broker_deliveries_total"
DELIVERED_BYTES = "llmstream_broker_delivered_bytes_total"
SOURCES = ("live", "watermark", "queue_log", "history", "heartbeats")
WORKERS = 2
HEARTBEAT_S = 5.0  # the workers' HEARTBEAT_INTERVAL_S (their default)
WATERMARKS_PER_S = 4  # the keeper publishes at most every 0.25 s (queue_keeper.WATERMARK_MIN_S)
TASK_COUNTS = (250, 1000)
CONCURRENCY = 50
TOKENS = 4
START_TIMEOUT_S = 240.0


def timer_bound(seconds: float) -> float:
    """The most messages a replica may get in ``seconds`` from timers alone, with slack for
    the start and the end of the span (a heartbeat probe, a watermark in flight)."""
    return seconds * (WATERMARKS_PER_S + WORKERS / HEARTBEAT_S) + 2 * WORKERS + 4


@pytest.fixture(scope="module")
def replicas(module_deployment: Deployment) -> tuple[Service, Service, Service]:
    """(keeper, other, idle): the keeper starts first, so it holds the lock."""
    for _ in range(WORKERS):
        module_deployment.worker()
    keeper = module_deployment.api()
    module_deployment.start()
    asyncio.run(_until_keeping(keeper))
    other, idle = module_deployment.api(), module_deployment.api()
    for service in (other, idle):
        service.start()
    for service in (other, idle):
        service.wait_ready(timeout=START_TIMEOUT_S)
    return keeper, other, idle


async def _until_keeping(api: Service) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await wait_for_metric(
            client, f"{api.base_url}/metrics", lambda s: s.value("llmstream_queue_keeper") == 1,
            timeout=60, what=f"{api.name} keeps the queue log",
        )


def delivered(samples: Samples) -> tuple[dict[str, float], float]:
    counts = {source: samples.value(DELIVERIES, source=source) for source in SOURCES}
    return counts, sum(samples.value(DELIVERED_BYTES, source=source) for source in SOURCES)


async def run_tasks(count: int, post_to: list[str], read_from: list[str]) -> None:
    """``count`` sessions: each queued on one replica and read to its end on another."""
    slots = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10)) as client:

        async def one(index: int) -> None:
            async with slots:
                asked = prompt(f"cost {index}", tokens=TOKENS)
                body = {"message": asked.text}
                queued = await client.post(f"{post_to[index % 2]}/chat/async", json=body)
                assert queued.status_code == 200, queued.text
                sid = queued.json()["session_id"]
                events = await read_stream(client, f"{read_from[index % 2]}/stream/{sid}")
                assert_complete(events, asked.expected)

        await asyncio.gather(*(one(index) for index in range(count)))


async def measured(
    idle: Service, count: int, post_to: list[str], read_from: list[str]
) -> tuple[dict[str, float], float, float]:
    """What the broker delivered to ``idle`` while ``count`` tasks ran: by source, bytes, seconds."""
    async with httpx.AsyncClient(timeout=10) as client:
        before, bytes_before = delivered(await scrape(client, f"{idle.base_url}/metrics"))
        started = time.monotonic()
        await run_tasks(count, post_to, read_from)
        seconds = time.monotonic() - started
        after, bytes_after = delivered(await scrape(client, f"{idle.base_url}/metrics"))
    counts = {source: after[source] - before[source] for source in SOURCES}
    return counts, bytes_after - bytes_before, seconds


# The second broker version runs the larger count: what it delivers to the idle replica (the
# keeper's lock, the watermark fanout) is the broker's part; the count's independence is shown
# on the first.
@pytest.mark.parametrize("tasks", [TASK_COUNTS[0], pytest.param(TASK_COUNTS[1], marks=pytest.mark.broker)])
async def test_a_replica_that_serves_nobody_pays_only_for_its_timers(
    replicas: tuple[Service, Service, Service], tasks: int
) -> None:
    keeper, other, idle = replicas
    urls = [keeper.base_url, other.base_url]
    counts, nbytes, seconds = await measured(idle, tasks, urls, urls[::-1])
    total = sum(counts.values())
    bound = timer_bound(seconds)
    print(f"{tasks} tasks in {seconds:.1f}s: {idle.name} got {counts}, {nbytes:g} bytes (bound {bound:.0f})")
    # The counters are live: the watermark comes at least every second.
    assert counts["watermark"] >= seconds / 2, f"{idle.name} got {counts['watermark']:g} watermarks"
    assert total <= bound, (
        f"{idle.name}, serving nobody, got {total:g} messages while {tasks} tasks ran for "
        f"{seconds:.1f}s (by source {counts}); its timers allow {bound:.0f}: something is "
        "broadcast again"
    )
    for source in ("queue_log", "history", "live"):
        got = counts[source]
        assert got == 0, f"{idle.name} serves nobody, yet got {got:g} {source} messages"
    assert nbytes <= 300 * max(total, 1), f"{nbytes:g} bytes in {total:g} messages: tasks travel to it"


async def test_a_replica_that_serves_one_session_among_many_pays_for_that_one(
    replicas: tuple[Service, Service, Service],
) -> None:
    keeper, other, idle = replicas
    urls = [keeper.base_url, other.base_url]
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10)) as client:
        before, _ = delivered(await scrape(client, f"{idle.base_url}/metrics"))
        started = time.monotonic()
        asked = prompt("the one", tokens=40, tps=20)
        queued = await client.post(f"{keeper.base_url}/chat/async", json={"message": asked.text})
        sid = queued.json()["session_id"]
        mine = asyncio.create_task(read_stream(client, f"{idle.base_url}/stream/{sid}"))
        await run_tasks(TASK_COUNTS[-1], urls, urls[::-1])
        assert_complete(await mine, asked.expected)
        seconds = time.monotonic() - started
        after, _ = delivered(await scrape(client, f"{idle.base_url}/metrics"))
    counts = {source: after[source] - before[source] for source in SOURCES}
    # Its own answer: at most one frame per token and a replay, and the positions of its own
    # wait; everything else, timers.
    own = asked.tokens + 4
    bound = timer_bound(seconds) + own
    total = sum(counts.values())
    print(f"one among {TASK_COUNTS[-1]} in {seconds:.1f}s: {idle.name} got {counts} (bound {bound:.0f})")
    assert total <= bound, (
        f"{idle.name}, serving one session among {TASK_COUNTS[-1]}, got {total:g} messages in "
        f"{seconds:.1f}s (by source {counts}); its timers and its session allow {bound:.0f}"
    )
    assert counts["queue_log"] == 0 and counts["live"] <= own, counts
