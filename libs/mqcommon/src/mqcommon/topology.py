"""Every exchange and queue llm-stream uses, with its real AMQP arguments, in one place.

Both services declare the same objects with the same arguments, so whichever starts first
creates them and the other's declaration is a no-op (a mismatch would be a channel error).

Replication (``QUEUE_REPLICAS``, ``STREAM_REPLICAS``, ``QUEUE_LEADER_LOCATOR``) is given when a
queue is created. The broker compares those arguments on every later declaration, so a queue
created before they were set, or with other values, would refuse them: it is then declared
without them, or used as it is, and keeps the replication it has (``rabbitmq-queues grow``
or ``rabbitmq-streams add_replica`` change that; docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from mqcommon.settings import BrokerSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    passive: bool = False  # use it as it exists (declared before with other arguments)
    # Given only when the queue is created (replication, leader placement): see the docstring.
    replication: dict[str, Any] = field(default_factory=dict)

    def declared_as(self) -> dict[str, Any] | None:
        """The arguments sent in a declaration: None for a passive one."""
        return None if self.passive else {**self.arguments, **self.replication}


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    type: aio_pika.ExchangeType
    durable: bool = True


@dataclass(frozen=True, slots=True)
class Topology:
    task_queue: QueueSpec
    intake_exchange: ExchangeSpec
    queue_log_stream: QueueSpec
    events_stream: QueueSpec
    cancels_stream: QueueSpec
    live_exchange: ExchangeSpec
    dead_letter_exchange: ExchangeSpec
    dead_letter_queue: QueueSpec
    dead_letter_notices: QueueSpec
    presence_exchange: ExchangeSpec
    workers_exchange: ExchangeSpec
    positions_exchange: ExchangeSpec
    watermarks_stream: QueueSpec
    keeper_lock: str
    # ``TASK_SHARDS`` > 1: the task queues of shards 1..N-1 (shard 0 is ``task_queue``), and the
    # direct exchange a task is published to with its shard's key (the queue log takes every key).
    shards: tuple[QueueSpec, ...] = ()
    shard_exchange: ExchangeSpec | None = None

    @property
    def task_queues(self) -> tuple[QueueSpec, ...]:
        """Every shard's task queue, shard 0 first."""
        return (self.task_queue, *self.shards)

    def shard_key(self, session_id: str) -> str:
        """The routing key of the shard a session's task goes to: the same on every replica."""
        return f"s{zlib.crc32(session_id.encode()) % len(self.task_queues)}"

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> Topology:
        quorum = {
            "x-quorum-initial-group-size": settings.queue_replicas,
            "x-queue-leader-locator": settings.queue_leader_locator,
        }
        stream = {
            "x-initial-cluster-size": settings.stream_replicas,
            "x-queue-leader-locator": settings.queue_leader_locator,
        }
        shards = settings.task_shards
        # Each shard bounds its share; admission bounds the line as a whole (the keeper's count).
        bound = -(-settings.max_queued_tasks // shards)
        topology = cls(
            # Quorum: replicated when the broker is a cluster, and it counts deliveries
            # (x-delivery-limit) so a task that crashes every worker ends in the DLQ.
            task_queue=QueueSpec(
                name=settings.task_queue,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": settings.task_max_deliveries,
                    "x-dead-letter-exchange": settings.dead_letter_exchange,
                    "x-dead-letter-routing-key": settings.dead_letter_queue,
                    # A bounded backlog; a full queue refuses (nacks) a publish rather than
                    # dropping a task it accepted.
                    "x-max-length": bound,
                    "x-overflow": "reject-publish",
                },
                replication=quorum,
            ),
            # One publish reaches the task queue and the queue log in the same order.
            intake_exchange=ExchangeSpec(name=settings.intake_exchange, type=aio_pika.ExchangeType.FANOUT),
            # Who entered the task queue and who left it: the API replicas read it to tell every
            # waiting client its position. Small records; an hour is longer than any wait.
            queue_log_stream=QueueSpec(
                name=settings.queue_log_stream,
                arguments={
                    "x-queue-type": "stream",
                    "x-max-age": "1h",
                    "x-max-length-bytes": 500_000_000,
                    "x-stream-max-segment-size-bytes": 8_000_000,
                },
                replication=stream,
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
                replication=stream,
            ),
            # Cancels: few and small, so a worker reads all of the last hour when it starts and
            # drops a queued task whose session was cancelled before it arrived.
            cancels_stream=QueueSpec(
                name=settings.cancels_stream,
                arguments={"x-queue-type": "stream", "x-max-age": "1h", "x-max-length-bytes": 100_000_000},
                replication=stream,
            ),
            # Live frames, routed by replica id to the one queue of each API replica.
            live_exchange=ExchangeSpec(name=settings.live_exchange, type=aio_pika.ExchangeType.DIRECT),
            dead_letter_exchange=ExchangeSpec(
                name=settings.dead_letter_exchange, type=aio_pika.ExchangeType.DIRECT
            ),
            dead_letter_queue=QueueSpec(
                name=settings.dead_letter_queue, arguments={"x-queue-type": "quorum"}, replication=quorum
            ),
            # A copy of every dead-lettered task, for the workers: a task the broker gave up on
            # (its delivery limit) has no worker to end its session (llm_stream_worker.dead_letters).
            dead_letter_notices=QueueSpec(
                name=f"{settings.dead_letter_queue}.notices",
                arguments={"x-queue-type": "quorum"},
                replication=quorum,
            ),
            presence_exchange=ExchangeSpec(
                name=settings.presence_exchange, type=aio_pika.ExchangeType.FANOUT, durable=False
            ),
            # Worker heartbeats (see llm_stream_worker.heartbeat): transient, like presence.
            workers_exchange=ExchangeSpec(
                name=settings.workers_exchange, type=aio_pika.ExchangeType.FANOUT, durable=False
            ),
            # The keeper of the queue log tells every API replica the state of the waiting line
            # (docs/adr/0004-queue-positions-without-a-broadcast.md): transient, repeated.
            positions_exchange=ExchangeSpec(
                name=f"{settings.task_queue}.positions", type=aio_pika.ExchangeType.FANOUT
            ),
            # The recent watermarks, so that a new keeper reads the last one and knows where the
            # waiting line begins in the log: small, and its last chunk is all that is read.
            watermarks_stream=QueueSpec(
                name=f"{settings.task_queue}.watermarks",
                arguments={
                    "x-queue-type": "stream",
                    "x-max-age": "1h",
                    "x-max-length-bytes": 5_000_000,
                    "x-stream-max-segment-size-bytes": 500_000,
                },
                replication=stream,
            ),
            # The keeper is the replica whose connection holds this exclusive queue.
            keeper_lock=f"{settings.task_queue}.keeper",
        )
        if shards == 1:
            return topology
        return replace(
            topology,
            shards=tuple(
                replace(topology.task_queue, name=f"{settings.task_queue}.s{index}")
                for index in range(1, shards)
            ),
            shard_exchange=ExchangeSpec(
                name=f"{settings.task_queue}.shards", type=aio_pika.ExchangeType.DIRECT
            ),
        )

    QUEUES = (
        "task_queue",
        "queue_log_stream",
        "events_stream",
        "cancels_stream",
        "dead_letter_queue",
        "dead_letter_notices",
        "watermarks_stream",
    )

    async def declare(self, connection: AbstractConnection) -> Topology:
        """Declare the durable shared objects (idempotent); returns the topology in effect.

        A queue that exists with other replication arguments keeps its own (see the module's
        docstring). A task queue declared by an older release without the backlog bound
        cannot be redeclared with it (the broker refuses other arguments): it is then used as
        it is, and the log says so; the API still refuses past ``MAX_QUEUED_TASKS``.
        """
        in_effect: dict[str, Any] = {
            name: await _settle(connection, getattr(self, name)) for name in self.QUEUES
        }
        in_effect["shards"] = tuple([await _settle(connection, shard) for shard in self.shards])
        topology = replace(self, **in_effect)
        channel = await connection.channel()
        try:
            await topology._declare_rest(channel)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return topology

    async def _declare_rest(self, channel: AbstractChannel) -> None:
        dlx = await declare_exchange(channel, self.dead_letter_exchange)
        dlq = await declare_queue(channel, self.dead_letter_queue)
        await dlq.bind(dlx, routing_key=self.dead_letter_queue.name)
        notices = await declare_queue(channel, self.dead_letter_notices)
        await notices.bind(dlx, routing_key=self.dead_letter_queue.name)
        tasks = await declare_queue(channel, self.task_queue)
        intake = await declare_exchange(channel, self.intake_exchange)
        queue_log = await declare_queue(channel, self.queue_log_stream)
        await tasks.bind(intake)
        await queue_log.bind(intake)
        if self.shard_exchange is not None:
            sharded = await declare_exchange(channel, self.shard_exchange)
            for index, spec in enumerate(self.task_queues):
                shard = tasks if index == 0 else await declare_queue(channel, spec)
                await shard.bind(sharded, routing_key=f"s{index}")
                await queue_log.bind(sharded, routing_key=f"s{index}")
        await declare_queue(channel, self.events_stream)
        await declare_queue(channel, self.cancels_stream)
        await declare_exchange(channel, self.live_exchange)
        await declare_exchange(channel, self.presence_exchange)
        await declare_exchange(channel, self.workers_exchange)
        positions = await declare_exchange(channel, self.positions_exchange)
        watermarks = await declare_queue(channel, self.watermarks_stream)
        await watermarks.bind(positions)


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    return await channel.declare_queue(
        spec.name,
        durable=spec.durable,
        exclusive=spec.exclusive,
        auto_delete=spec.auto_delete,
        arguments=spec.declared_as(),
        passive=spec.passive,
    )


async def _settle(connection: AbstractConnection, spec: QueueSpec) -> QueueSpec:
    """Declare ``spec``'s queue and return the spec that declares it from now on: with its
    replication (created so, or so before), without (it existed without), or passive (it
    exists with other arguments). A refused declaration closes its channel: one per try."""
    tries = [spec]
    if spec.replication:
        tries.append(replace(spec, replication={}))
    tries.append(replace(spec, replication={}, passive=True))
    refused = ""
    for attempt in tries:
        channel = await connection.channel()
        try:
            await declare_queue(channel, attempt)
        except ChannelPreconditionFailed as exc:
            refused = str(exc)
            continue
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()
        if attempt.passive:
            only_replication = any(arg in refused for arg in spec.replication)
            if only_replication:
                log.info("queue exists with other replication; using it as it is", queue=spec.name)
            else:
                log.warning(
                    "queue exists with other arguments; using it as it is (delete it, or set a "
                    "max-length policy with overflow reject-publish, to bound it at the broker)",
                    queue=spec.name,
                    error=refused,
                )
        return attempt
    raise AssertionError("unreachable: a passive declaration of an existing queue succeeds")


async def declare_exchange(channel: AbstractChannel, spec: ExchangeSpec) -> AbstractExchange:
    return await channel.declare_exchange(spec.name, spec.type, durable=spec.durable)
