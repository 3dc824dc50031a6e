"""The API's side of the broker: publish tasks, tail answer events, announce served sessions.

The connection is made in the background and retried, so the API starts (and answers
``/health``) while the broker is down; ``/health/full`` reports the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.batching import EventBatcher
from mqcommon.connection import connect, process_name
from mqcommon.errors import BrokerUnavailable
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import ChatTask, StreamEvent
from mqcommon.topology import Topology
from mqcommon.tracing import TRACEPARENT_HEADER, trace_id_of

from llm_stream_api import metrics
from llm_stream_api.hub import SessionHub
from llm_stream_api.settings import APISettings
from llm_stream_api.tail import StreamTail

log = structlog.get_logger(__name__)

CONNECT_RETRY_S = 2.0
SWEEP_INTERVAL_S = 5.0
ANNOUNCE_FLUSH_S = 0.005


class Broker:
    def __init__(self, settings: APISettings, hub: SessionHub) -> None:
        self.settings = settings
        self.hub = hub
        self.topology = Topology.from_settings(settings)
        self.tail = StreamTail(hub, self.topology.events_stream, settings.session_ttl_s)
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._stats_channel: AbstractChannel | None = None
        self._ready = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._stats_cache: tuple[float, dict[str, int]] | None = None
        # A lost announcement only means other processes learn of the session when its
        # worker starts; the task itself is already queued.
        self.announcements = EventBatcher(
            self._publish_events,
            producer=process_name("api"),
            flush_interval_s=ANNOUNCE_FLUSH_S,
            flush_max_bytes=256_000,
        )

    @property
    def connected(self) -> bool:
        return (
            self._ready.is_set()
            and self._connection is not None
            and not self._connection.is_closed
            and self._publish_channel is not None
            and not self._publish_channel.is_closed
        )

    async def start(self) -> None:
        self._background = [
            asyncio.create_task(self._connect_forever(), name="broker-connect"),
            asyncio.create_task(self._announce_forever(), name="presence"),
            asyncio.create_task(self._sweep_forever(), name="hub-sweep"),
        ]

    async def wait_ready(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        await self.announcements.drain()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    # -- publishing ------------------------------------------------------------------------

    async def enqueue(self, task: ChatTask, traceparent: str) -> None:
        """Durably queue ``task``, then announce its session; raises ``BrokerUnavailable``.

        Only the task's confirm is awaited. The announcement (which tells every API process
        that the session exists before a worker starts it) follows in the next coalesced
        batch, so a session is never announced without a queued task.
        """
        if not self.connected:
            raise BrokerUnavailable("not connected to the broker")
        await publish_confirmed(
            self._publish_channel,
            self.topology.task_queue.name,
            task.encode(),
            timeout_s=self.settings.enqueue_timeout_s,
            persistent=True,
            headers={TRACEPARENT_HEADER: traceparent, "session_id": task.session_id},
            message_id=task.task_id,
        )
        trace_id = trace_id_of(traceparent)
        self.announcements.emit(
            StreamEvent(
                session_id=task.session_id, kind="accepted", at=task.created_at, trace_id=trace_id
            ),
            urgent=True,
        )
        # This process knows at once, without waiting for its own event to come back.
        session = self.hub.session(task.session_id)
        if session.accepted_at is None:
            session.accepted_at = task.created_at
            session.trace_id = trace_id

    async def _publish_events(self, body: bytes) -> None:
        if self._publish_channel is None:
            raise BrokerUnavailable("not connected to the broker")
        await publish_confirmed(
            self._publish_channel,
            self.topology.events_stream.name,
            body,
            timeout_s=self.settings.enqueue_timeout_s,
        )

    async def queue_stats(self) -> dict[str, int]:
        """Ready messages and consumers of the task queue (cached briefly)."""
        now = time.monotonic()
        if self._stats_cache and now - self._stats_cache[0] < self.settings.stats_cache_s:
            return self._stats_cache[1]
        if not self.connected or self._connection is None:
            raise BrokerUnavailable("not connected to the broker")
        try:
            if self._stats_channel is None or self._stats_channel.is_closed:
                self._stats_channel = await self._connection.channel()
            # The robust channel would answer from its cache of declared queues; the
            # underlying channel asks the broker every time.
            underlay = await self._stats_channel.get_underlay_channel()
            result = await underlay.queue_declare(self.topology.task_queue.name, passive=True)
        except (AMQPException, AMQPError, ConnectionError, RuntimeError) as exc:
            self._stats_channel = None
            raise BrokerUnavailable(f"cannot inspect {self.topology.task_queue.name}: {exc}") from exc
        stats = {"messages": result.message_count or 0, "consumers": result.consumer_count or 0}
        self._stats_cache = (now, stats)
        return stats

    # -- background ------------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        while True:
            try:
                connection = await connect(self.settings.rabbit_mq, "api")
                setup = await connection.channel()
                await self.topology.declare(setup)
                await setup.close()
                self._publish_channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                await self.tail.start(await connection.channel())
                self._connection = connection
                self._ready.set()
                metrics.BROKER_CONNECTED.set(1)
                log.info("connected to the broker", queue=self.topology.task_queue.name)
                return
            except (AMQPException, AMQPError, ConnectionError, OSError, RuntimeError) as exc:
                log.error(
                    "broker unreachable; retrying",
                    error=str(exc) or type(exc).__name__,
                    broker=self.settings.rabbit_mq.rsplit("@", 1)[-1],
                    retry_s=CONNECT_RETRY_S,
                )
                await asyncio.sleep(CONNECT_RETRY_S)

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_interval_s)
            sessions = self.hub.served_sessions()
            if not sessions or not self.connected or self._publish_channel is None:
                continue
            try:
                exchange = await self._publish_channel.get_exchange(
                    self.topology.presence_exchange.name, ensure=False
                )
                # Not mandatory: with no worker bound there is nobody to tell. A lost
                # announcement is repeated a few seconds later.
                await exchange.publish(
                    aio_pika.Message(orjson.dumps({"sessions": sessions})),
                    routing_key="",
                    mandatory=False,
                )
            except (AMQPException, AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
                log.warning("presence announcement failed", error=str(exc))

    async def _sweep_forever(self) -> None:
        while True:
            metrics.BROKER_CONNECTED.set(1 if self.connected else 0)
            metrics.HUB_SESSIONS.set(len(self.hub))
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.hub.sweep()
