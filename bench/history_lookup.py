"""How long a history lookup takes, with and without the broker's stream filtering.

Fills a fresh stream with the records a busy window leaves (an acceptance marker and a
transcript per session), then looks up sessions with the API's own ``History`` class: filtered
by the broker (RabbitMQ 3.13+) and, for comparison, read in full and filtered here (what a
3.10 broker allows). Prints the figures; used for docs/adr/0002-scale-out-return-path.md.

    uv run python bench/history_lookup.py --amqp-url amqp://guest:guest@127.0.0.1:5672/
    uv run python bench/history_lookup.py --broker container     # RabbitMQ 4 (tests/support)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika
from llm_stream_api.broker.history import History
from mqcommon.connection import broker_version
from mqcommon.schemas import End, HistoryRecord
from mqcommon.topology import QueueSpec, declare_queue

ROOT = Path(__file__).resolve().parents[1]


def stream_spec(name: str) -> QueueSpec:
    return QueueSpec(
        name,
        arguments={
            "x-queue-type": "stream",
            "x-max-age": "1h",
            "x-stream-filter-size-bytes": 255,
            "x-stream-max-segment-size-bytes": 16_000_000,
        },
    )


async def fill(channel: aio_pika.abc.AbstractChannel, stream: str, sessions: list[str], text: str) -> float:
    started = time.perf_counter()
    pending = []
    for sid in sessions:
        for record in (
            HistoryRecord("accepted", sid, at=time.time()),
            HistoryRecord("transcript", sid, at=time.time(), text=text, end=End("done", len(text))),
        ):
            pending.append(
                channel.default_exchange.publish(
                    aio_pika.Message(record.encode(), headers=record.headers()), routing_key=stream
                )
            )
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return time.perf_counter() - started


async def measure(url: str, sessions: int, lookups: int, text_chars: int) -> None:
    connection = await aio_pika.connect_robust(url)
    version = broker_version(connection)
    name = f"bench.history.{uuid.uuid4().hex[:8]}"
    spec = stream_spec(name)
    publish = await connection.channel(publisher_confirms=True)
    setup = await connection.channel()
    await declare_queue(setup, spec)
    ids = [uuid.uuid4().hex for _ in range(sessions)]
    seconds = await fill(publish, name, ids, "x" * text_chars)
    print(
        f"RabbitMQ {'.'.join(map(str, version))}: {sessions} sessions ({2 * sessions} records, "
        f"transcripts of {text_chars} chars) written in {seconds:.1f} s"
    )
    modes = (
        [("filtered by the broker", True), ("read in full", False)]
        if version >= (3, 13)
        else [("read in full (no stream filtering before 3.13)", False)]
    )
    try:
        for label, filtering in modes:
            history = History(spec, window_s=3600, timeout_s=60, concurrency=1)
            await history.start(
                publish, await connection.channel(), await connection.channel(), filtering=filtering
            )
            times = []
            for sid in random.sample(ids, min(lookups, len(ids))):
                started = time.perf_counter()
                records = await history.lookup(sid)
                times.append(time.perf_counter() - started)
                assert {r.kind for r in records} == {"accepted", "transcript"}, records
            times.sort()
            p95 = times[max(0, int(len(times) * 0.95) - 1)]
            print(
                f"  lookup, {label}: p50 {1000 * statistics.median(times):.1f} ms, "
                f"p95 {1000 * p95:.1f} ms, max {1000 * times[-1]:.1f} ms ({len(times)} lookups)"
            )
    finally:
        with contextlib.suppress(Exception):
            await setup.queue_delete(name)
        await connection.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument(
        "--broker",
        choices=["url", "container"],
        default="url",
        help="'container': start the tests' RabbitMQ 4 container (needs podman)",
    )
    p.add_argument("--sessions", type=int, default=20_000, help="sessions in the window")
    p.add_argument("--lookups", type=int, default=50)
    p.add_argument("--text-chars", type=int, default=250, help="answer length (50 tokens ~ 250 chars)")
    args = p.parse_args()
    if args.broker == "container":
        sys.path.insert(0, str(ROOT))
        from tests.support.brokers import broker_for_run

        with broker_for_run("container") as broker:
            asyncio.run(measure(broker.amqp_url, args.sessions, args.lookups, args.text_chars))
    else:
        asyncio.run(measure(args.amqp_url, args.sessions, args.lookups, args.text_chars))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
