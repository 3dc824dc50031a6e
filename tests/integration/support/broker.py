"""The uuid-named topology each test group uses on the run's broker, and helpers around it.

The broker itself is chosen and started once per run (``tests/support/brokers.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import aio_pika
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code (fixtures).

    It runs on a thread of its own so that it never touches the event loop of a test.
    """

    async def main() -> T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@dataclass(frozen=True, slots=True)
class Names:
    """Queue and exchange names of one isolated llm-stream deployment on the shared broker."""

    task_queue: str
    events_stream: str
    cancels_stream: str
    live_exchange: str
    presence_exchange: str
    workers_exchange: str
    dead_letter_exchange: str
    dead_letter_queue: str
    # Task queues of the pools and lanes other than the default line, and their dead letters.
    lines: tuple[str, ...] = ()
    dead_letters: tuple[str, ...] = ()
    shards: int = 1  # TASK_SHARDS: each line's task queue is spread over this many queues

    def with_pools(self, pools_json: str) -> Names:
        """The same names with every line and dead-letter queue ``LLM_POOLS`` adds."""
        from mqcommon.pools import PoolMap
        from mqcommon.settings import BrokerSettings

        pools = PoolMap.from_settings(
            BrokerSettings(
                llm_pools=pools_json, task_queue=self.task_queue, dead_letter_queue=self.dead_letter_queue
            )
        )
        lines = tuple(line.queue for line in pools.lines() if line.queue != self.task_queue)
        dead = tuple(pools.dead_letter_queue(name) for name in pools.pools)
        return replace(self, lines=lines, dead_letters=tuple(q for q in dead if q != self.dead_letter_queue))

    @classmethod
    def fresh(cls) -> Names:
        prefix = f"it.{uuid.uuid4().hex}"
        return cls(
            task_queue=f"{prefix}.tasks",
            events_stream=f"{prefix}.events",
            cancels_stream=f"{prefix}.cancels",
            live_exchange=f"{prefix}.live",
            presence_exchange=f"{prefix}.presence",
            workers_exchange=f"{prefix}.workers",
            dead_letter_exchange=f"{prefix}.dlx",
            dead_letter_queue=f"{prefix}.dead",
        )

    def env(self) -> dict[str, str]:
        return {
            "TASK_QUEUE": self.task_queue,
            "EVENTS_STREAM": self.events_stream,
            "CANCELS_STREAM": self.cancels_stream,
            "LIVE_EXCHANGE": self.live_exchange,
            "PRESENCE_EXCHANGE": self.presence_exchange,
            "WORKERS_EXCHANGE": self.workers_exchange,
            "DEAD_LETTER_EXCHANGE": self.dead_letter_exchange,
            "DEAD_LETTER_QUEUE": self.dead_letter_queue,
            **({"TASK_SHARDS": str(self.shards)} if self.shards > 1 else {}),
        }


async def delete_topology(url: str, names: Names) -> None:
    """Delete every queue and exchange of ``names`` (missing ones are fine)."""
    connection = await aio_pika.connect(url)
    try:
        lines = (names.task_queue, *names.lines)
        shards = tuple(f".s{index}" for index in range(1, names.shards))
        queues = (
            *(f"{line}{suffix}" for line in lines for suffix in ("", ".log", ".watermarks", *shards)),
            names.events_stream, names.cancels_stream,
            *(
                f"{dead}{suffix}" for dead in (names.dead_letter_queue, *names.dead_letters)
                for suffix in ("", ".notices")
            ),
        )
        for queue in queues:
            channel = await connection.channel()
            try:
                await channel.queue_delete(queue)
            except (AMQPException, AMQPError):
                pass  # a failed delete closes the channel; the next one gets a new channel
            finally:
                if not channel.is_closed:
                    await channel.close()
        for exchange in (
            names.live_exchange, names.presence_exchange, names.workers_exchange, names.dead_letter_exchange,
            *(f"{line}{suffix}" for line in lines for suffix in (".intake", ".positions", ".shards")),
        ):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(exchange)
            except (AMQPException, AMQPError):
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


async def message_count(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declaration: the queue must exist)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def wait_for_messages(url: str, queue: str, count: int, *, timeout: float) -> None:
    """Poll ``queue`` until it holds at least ``count`` messages; TimeoutError otherwise."""
    async with asyncio.timeout(timeout):
        while True:
            if await message_count(url, queue) >= count:
                return
            await asyncio.sleep(0.2)
