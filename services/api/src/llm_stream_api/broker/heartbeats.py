"""What this API process knows about the workers: a registry of their heartbeats, kept briefly.

Every API process binds an exclusive, auto-delete queue to the workers fanout exchange and
keeps the last heartbeat of each worker that consumes *its* task queue (deployments may share
a broker and the exchange). A worker silent for ``EXPIRY_INTERVALS`` of its announced interval
is forgotten; one that says it is stopping is forgotten at once. On connecting, the process
sends a probe so the workers answer without waiting for their next interval.

``/health/full`` uses it to answer ``"openai": "configured"`` when a worker has an LLM
configured (the API itself may hold no key), and ``/stats`` for the worker count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.heartbeat import EXPIRY_INTERVALS, PROBE, WorkerHeartbeat, decode
from mqcommon.topology import declare_exchange

from llm_stream_api import metrics
from llm_stream_api.broker.connection import BrokerConnection

log = structlog.get_logger(__name__)

BROKER_ERRORS = (AMQPException, AMQPError, ConnectionError, RuntimeError, TimeoutError)
RETRY_S = 1.0
PROBE_ANSWERED_S = 2.0  # live workers answer a probe at once; silence after this long is absence


@dataclass(frozen=True, slots=True)
class WorkersSummary:
    count: int
    llm_configured: bool
    concurrency: int
    running: int
    holds: int = 0  # tasks they may hold delivered but not started


class WorkerRegistry:
    """The last heartbeat of each live worker of the release's pools.

    ``queues``: each pool's task queue (its default lane's, which its workers name in their
    heartbeats) and the pool's name; a single queue name for a release without pools."""

    def __init__(self, queues: str | dict[str, str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.pools = {queues: "default"} if isinstance(queues, str) else dict(queues)
        self._clock = clock
        self._seen: dict[str, tuple[float, WorkerHeartbeat]] = {}
        self._started_in: dict[str, float] = {}  # pool -> its last worker's measured start
        self._probed_at: float | None = None  # when every worker was last asked for a heartbeat

    def observe(self, beat: WorkerHeartbeat) -> None:
        if beat.queue not in self.pools:
            return
        if beat.started_in_s is not None:
            self._started_in[self.pools[beat.queue]] = beat.started_in_s
        if beat.state == "stopping":
            self._seen.pop(beat.worker, None)
        else:
            self._seen[beat.worker] = (self._clock(), beat)

    def alive(self) -> list[WorkerHeartbeat]:
        now = self._clock()
        expired = [
            name for name, (seen, beat) in self._seen.items()
            if now - seen > EXPIRY_INTERVALS * beat.interval_s
        ]
        for name in expired:
            del self._seen[name]
        return [beat for _, beat in self._seen.values()]

    def probed(self) -> None:
        """Every worker was just asked for a heartbeat (they answer at once)."""
        self._probed_at = self._clock()

    def absent(self, pool: str) -> bool:
        """No worker of ``pool`` is alive, as far as heartbeats heard since a probe can tell."""
        if self._probed_at is None or self._clock() - self._probed_at < PROBE_ANSWERED_S:
            return False  # not heard long enough to know
        return self.summary(pool).count == 0

    def start_estimate(self, pool: str) -> float | None:
        """How long the pool's last worker took from its start to consuming; None before one."""
        return self._started_in.get(pool)

    def summary(self, pool: str | None = None) -> WorkersSummary:
        """The workers of ``pool``, or of every pool."""
        beats = [beat for beat in self.alive() if pool is None or self.pools[beat.queue] == pool]
        return WorkersSummary(
            count=len(beats),
            llm_configured=any(beat.llm_configured for beat in beats),
            concurrency=sum(beat.concurrency for beat in beats),
            running=sum(beat.running for beat in beats),
            holds=sum(beat.holds for beat in beats),
        )


class WorkerWatch:
    """Consume heartbeats on the API's broker connection, once it exists."""

    def __init__(self, broker: BrokerConnection, registry: WorkerRegistry) -> None:
        self._broker = broker
        self.registry = registry
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            connection = self._broker.connection
            if connection is not None and not connection.is_closed:
                try:
                    await self._setup(connection)
                    return
                except BROKER_ERRORS as exc:
                    log.warning("cannot watch worker heartbeats; retrying", error=str(exc))
            await asyncio.sleep(RETRY_S if connection is not None else 0.1)

    async def _setup(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        exchange = await declare_exchange(channel, self._broker.topology.workers_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_message, no_ack=True)
        # Ask every worker for a heartbeat now rather than within its next interval.
        await exchange.publish(aio_pika.Message(PROBE), routing_key="", mandatory=False)
        self.registry.probed()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        metrics.count_delivery("heartbeats", len(message.body))
        beat = decode(message.body)
        if isinstance(beat, WorkerHeartbeat):
            self.registry.observe(beat)
