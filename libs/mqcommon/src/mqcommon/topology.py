"""Every exchange and queue llm-stream uses, with its real AMQP arguments, in one place.

Both services declare the same objects with the same arguments, so whichever starts first
creates them and the other's declaration is a no-op (a mismatch would be a channel error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from mqcommon.settings import BrokerSettings


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    type: aio_pika.ExchangeType
    durable: bool = True


@dataclass(frozen=True, slots=True)
class Topology:
    task_queue: QueueSpec
    events_stream: QueueSpec
    cancels_stream: QueueSpec
    live_exchange: ExchangeSpec
    dead_letter_exchange: ExchangeSpec
    dead_letter_queue: QueueSpec
    presence_exchange: ExchangeSpec
    workers_exchange: ExchangeSpec

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> Topology:
        return cls(
            # Quorum: replicated when the broker is a cluster, and it counts deliveries
            # (x-delivery-limit) so a task that crashes every worker ends in the DLQ.
            task_queue=QueueSpec(
                name=settings.task_queue,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": settings.task_max_deliveries,
                    "x-dead-letter-exchange": settings.dead_letter_exchange,
                    "x-dead-letter-routing-key": settings.dead_letter_queue,
                },
            ),
            # The history of every session (acceptance and final transcript), read on demand by
            # session id; see docs/adr/0002-scale-out-return-path.md. The largest Bloom filter
            # per chunk keeps filtered reads exact enough with many sessions per chunk
            # (RabbitMQ >= 3.13; older brokers ignore the argument).
            events_stream=QueueSpec(
                name=settings.events_stream,
                arguments={
                    "x-queue-type": "stream",
                    "x-max-age": settings.events_max_age,
                    "x-max-length-bytes": settings.events_max_bytes,
                    "x-stream-max-segment-size-bytes": 16_000_000,
                    "x-stream-filter-size-bytes": 255,
                },
            ),
            # Cancels: few and small, so a worker reads all of the last hour when it starts and
            # drops a queued task whose session was cancelled before it arrived.
            cancels_stream=QueueSpec(
                name=settings.cancels_stream,
                arguments={"x-queue-type": "stream", "x-max-age": "1h", "x-max-length-bytes": 100_000_000},
            ),
            # Live frames, routed by replica id to the one queue of each API replica.
            live_exchange=ExchangeSpec(name=settings.live_exchange, type=aio_pika.ExchangeType.DIRECT),
            dead_letter_exchange=ExchangeSpec(
                name=settings.dead_letter_exchange, type=aio_pika.ExchangeType.DIRECT
            ),
            dead_letter_queue=QueueSpec(
                name=settings.dead_letter_queue, arguments={"x-queue-type": "quorum"}
            ),
            presence_exchange=ExchangeSpec(
                name=settings.presence_exchange, type=aio_pika.ExchangeType.FANOUT, durable=False
            ),
            # Worker heartbeats (see llm_stream_worker.heartbeat): transient, like presence.
            workers_exchange=ExchangeSpec(
                name=settings.workers_exchange, type=aio_pika.ExchangeType.FANOUT, durable=False
            ),
        )

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare the durable shared objects (idempotent)."""
        dlx = await declare_exchange(channel, self.dead_letter_exchange)
        dlq = await declare_queue(channel, self.dead_letter_queue)
        await dlq.bind(dlx, routing_key=self.dead_letter_queue.name)
        await declare_queue(channel, self.task_queue)
        await declare_queue(channel, self.events_stream)
        await declare_queue(channel, self.cancels_stream)
        await declare_exchange(channel, self.live_exchange)
        await declare_exchange(channel, self.presence_exchange)
        await declare_exchange(channel, self.workers_exchange)


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    return await channel.declare_queue(
        spec.name,
        durable=spec.durable,
        exclusive=spec.exclusive,
        auto_delete=spec.auto_delete,
        arguments=spec.arguments,
    )


async def declare_exchange(channel: AbstractChannel, spec: ExchangeSpec) -> AbstractExchange:
    return await channel.declare_exchange(spec.name, spec.type, durable=spec.durable)
