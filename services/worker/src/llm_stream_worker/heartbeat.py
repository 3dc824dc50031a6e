"""Tell the API processes this worker exists: a heartbeat every few seconds.

The API never holds the LLM key; it learns from these heartbeats whether the workers have an
LLM configured (``/health/full``'s ``"openai"``) and how many workers serve its queue. See
``mqcommon.heartbeat`` for the message. A lost heartbeat costs nothing: the next one follows.

It runs on the worker's own broker connection (one connection per process), on a channel of
its own, and survives reconnects like every robust channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.connection import process_name
from mqcommon.heartbeat import WorkerHeartbeat, decode
from mqcommon.pools import DEFAULT_LANE
from mqcommon.topology import Topology, declare_exchange

from llm_stream_worker.generation import UPSTREAM
from llm_stream_worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S = 2.0
BROKER_ERRORS = (AMQPException, AMQPError, ConnectionError, RuntimeError, TimeoutError)


class Heartbeat:
    def __init__(
        self,
        settings: WorkerSettings,
        connection: Callable[[], AbstractRobustConnection | None],
        running: Callable[[], int],
        ready: Callable[[], bool],
        started_in: Callable[[], float | None] = lambda: None,
        holds: Callable[[], int] = lambda: 0,
    ) -> None:
        self.settings = settings
        self._started_in = started_in
        self._holds = holds
        self._connection = connection
        self._running = running
        self._ready = ready
        self._exchange: AbstractExchange | None = None
        self._wake = asyncio.Event()
        UPSTREAM.on_change = self._wake.set  # a change of the upstream's state is told at once
        self._task: asyncio.Task[None] | None = None
        self.name = process_name("worker")
        lines = settings.lines()
        # A pool's workers are known by its default lane's queue, whatever lanes it has.
        self._queue = next(names.task_queue for line, names in lines if line.lane == DEFAULT_LANE)
        self._lanes = [line.lane for line, _ in lines]

    def beat(self, state: Literal["ready", "starting", "stopping"] | None = None) -> WorkerHeartbeat:
        settings = self.settings
        return WorkerHeartbeat(
            worker=self.name,
            queue=self._queue,
            pool=settings.llm_pool or "default",
            lanes=self._lanes,
            upstream=UPSTREAM.state,
            started_in_s=self._started_in(),
            state=state or ("ready" if self._ready() else "starting"),
            llm_key=bool(settings.openai_api_key),
            llm_base_url=bool(settings.openai_base_url),
            concurrency=settings.worker_concurrency,
            running=self._running(),
            holds=self._holds(),
            interval_s=settings.heartbeat_interval_s,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        """Say goodbye (so API processes forget this worker at once), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._exchange is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await self._publish(self.beat("stopping"))

    async def _run(self) -> None:
        while self._exchange is None:
            # Once the worker consumes: its connection is then the one it keeps.
            connection = self._connection() if self._ready() else None
            if connection is not None and not connection.is_closed:
                try:
                    await self._setup(connection)
                    break
                except BROKER_ERRORS as exc:
                    log.warning("heartbeat set-up failed; retrying", error=str(exc))
            await asyncio.sleep(0.2)
        while True:
            try:
                await self._publish(self.beat())
            except BROKER_ERRORS as exc:
                log.warning("heartbeat not published", error=str(exc) or type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.heartbeat_interval_s)

    async def _setup(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        exchange = await declare_exchange(channel, Topology.from_settings(self.settings).workers_exchange)
        # Probes from API processes that have just connected: answer at once.
        probes = await channel.declare_queue(exclusive=True, auto_delete=True)
        await probes.bind(exchange)
        await probes.consume(self._on_message, no_ack=True)
        self._exchange = exchange

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if decode(message.body) == "probe":
            self._wake.set()

    async def _publish(self, beat: WorkerHeartbeat) -> None:
        assert self._exchange is not None
        await self._exchange.publish(
            aio_pika.Message(beat.encode(), content_type="application/json", expiration=30),
            routing_key="",
            mandatory=False,
            timeout=PUBLISH_TIMEOUT_S,
        )
