"""The API's one broker connection: made in the background, retried, shared by every part.

The connection is made and retried in the background, so the API starts (and answers
``/health``) while the broker is down; ``/health/full`` reports the truth. Each part that
needs the broker (the live feed, the history, the queue log, the heartbeats) registers a hook
that runs, in order, once the topology is declared; the replica is ready when they all have.
Nothing is read ahead at start-up: history is read on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.connection import broker_version, connect, redacted, watch_for_stalls
from mqcommon.errors import BrokerUnavailable
from mqcommon.schemas import LINE_HEADER, MESSAGE_KIND_HEADER
from mqcommon.topology import Topology, declare_exchange

from llm_stream_api import metrics
from llm_stream_api.settings import APISettings

log = structlog.get_logger(__name__)

CONNECT_RETRY_S = 2.0
# The broker errors a background send logs and forgets (what it sends is repeated or redundant).
SEND_ERRORS = (AMQPException, AMQPError, ConnectionError, RuntimeError, TimeoutError)

OnConnect = Callable[["BrokerConnection"], Awaitable[None]]


class BrokerConnection:
    def __init__(self, settings: APISettings, replica_id: str, topology: Topology | None = None) -> None:
        self.settings = settings
        self.replica_id = replica_id
        # The default pool's default line (``settings``' names without pools); it also names
        # what every line shares (history, cancels, live frames, presence).
        self.topology = topology or Topology.from_settings(settings)
        self._lines: dict[str, Topology] = {self.topology.task_queue.name: self.topology}
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None  # publisher confirms, returns raise
        self.intakes: dict[str, AbstractExchange] = {}  # each line's intake, declared on the channel
        self.version: tuple[int, ...] = ()
        self._on_connect: list[OnConnect] = []
        self._on_reconnect: list[Callable[[], None]] = []
        self._on_lost: list[Callable[[], None]] = []
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._renewing: asyncio.Task[None] | None = None
        self._restored = True  # False from a lost transport until aio-pika restored the channels

    @property
    def connected(self) -> bool:
        return (
            self._ready.is_set()
            and self.connection is not None
            and not self.connection.is_closed
            # False while reconnecting, until every channel is restored: a POST is refused at
            # once rather than waiting on a channel that is being restored.
            and self.connection.connected.is_set()
            and self._restored
            and self.channel is not None
            and not self.channel.is_closed
        )

    def publishing_channel(self) -> AbstractChannel:
        """The confirming channel; raises ``BrokerUnavailable`` while not connected."""
        if not self.connected or self.channel is None:
            raise BrokerUnavailable("not connected to the broker")
        return self.channel

    def renew_channel(self) -> None:
        """Publish on a new confirming channel from now on (the broker refused a publish for a
        reason other than a full queue: a channel may keep a queue's former leader)."""
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew_channel())

    async def _renew_channel(self) -> None:
        connection, old = self.connection, self.channel
        if connection is None or not self.connected:
            return
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            intakes = {
                name: await declare_exchange(channel, topology.shard_exchange or topology.intake_exchange)
                for name, topology in self._lines.items()
            }
        except SEND_ERRORS as exc:
            log.warning("publishing channel not renewed", error=str(exc) or type(exc).__name__)
            return
        self.channel, self.intakes = channel, intakes
        log.info("publishing on a new channel")
        if old is not None:
            # Publishes still waiting on the old channel get their confirms before it closes.
            await asyncio.sleep(self.settings.enqueue_timeout_s)
            with contextlib.suppress(*SEND_ERRORS):
                await old.close()

    def add_line(self, topology: Topology) -> str:
        """Declare another line's queue, intake and log too (a pool or a lane, ADR 0006)."""
        self._lines.setdefault(topology.task_queue.name, topology)
        return topology.task_queue.name

    def topology_of(self, line: str) -> Topology:
        """The topology in effect for the line whose task queue is ``line``."""
        return self._lines[line]

    def when_connected(self, hook: OnConnect) -> None:
        """Run ``hook`` once the topology is declared, before the replica is ready."""
        self._on_connect.append(hook)

    def when_reconnected(self, callback: Callable[[], None]) -> None:
        self._on_reconnect.append(callback)

    def when_lost(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` as soon as the connection is lost, before aio-pika reconnects and
        restores the channels."""
        self._on_lost.append(callback)

    def run_in_background(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        """A loop of one part (announcing, sweeping), cancelled at ``stop``."""
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    def send_soon(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Send without waiting for it (kept referenced until done)."""
        task = asyncio.create_task(coroutine)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def send(
        self, exchange: str, body: bytes, *, routing_key: str = "", headers: dict[str, str] | None = None,
        what: str,
    ) -> None:
        """Publish without a confirm and without ``mandatory``: what is sent so (presence,
        watermarks, watches, positions) is repeated or superseded soon, so a loss is logged
        (as ``what``) and forgotten."""
        channel = self.channel
        if not self.connected or channel is None:
            return
        try:
            target = await channel.get_exchange(exchange, ensure=False)
            await target.publish(
                aio_pika.Message(body, headers=dict(headers) if headers else None),
                routing_key=routing_key, mandatory=False,
            )
        except SEND_ERRORS as exc:
            log.warning(f"{what} not sent", routing_key=routing_key, error=str(exc))

    async def start(self) -> None:
        self.run_in_background("broker-connect", self._connect_forever())

    async def wait_ready(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()

    async def _connect_forever(self) -> None:
        while True:
            try:
                connection = await connect(
                    self.settings.rabbit_mq, "api", heartbeat_s=self.settings.amqp_heartbeat_s
                )
                for name, topology in list(self._lines.items()):
                    self._lines[name] = await topology.declare(connection)
                self.topology = self._lines[self.topology.task_queue.name]
                self.channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                # Where each line's tasks are published: its intake fanout, or with shards the
                # direct exchange that routes a task to its shard (and to the queue log).
                self.intakes = {
                    name: await declare_exchange(
                        self.channel, topology.shard_exchange or topology.intake_exchange
                    )
                    for name, topology in self._lines.items()
                }
                self.version = broker_version(connection)
                self.connection = connection
                for hook in self._on_connect:
                    await hook(self)
                connection.reconnect_callbacks.add(self._reconnected)
                connection.close_callbacks.add(self._lost)
                if self.settings.broker_stall_s > 0:
                    self.run_in_background(
                        "broker-stalls", watch_for_stalls(connection, self.settings.broker_stall_s)
                    )
                self._ready.set()
                metrics.BROKER_CONNECTED.set(1)
                log.info(
                    "connected to the broker", queue=self.topology.task_queue.name,
                    replica=self.replica_id, broker_version=".".join(map(str, self.version)),
                )
                return
            except (AMQPException, AMQPError, ConnectionError, OSError, RuntimeError) as exc:
                log.error(
                    "broker unreachable; retrying",
                    error=str(exc) or type(exc).__name__,
                    broker=redacted(self.settings.rabbit_mq),
                    retry_s=CONNECT_RETRY_S,
                )
                await asyncio.sleep(CONNECT_RETRY_S)

    def _lost(self, *_: object) -> None:
        self._restored = False
        for callback in self._on_lost:
            callback()

    def _reconnected(self, *_: object) -> None:
        self._restored = True
        for callback in self._on_reconnect:
            callback()


def line_headers(kind: str, line: str | None, default: Topology) -> dict[str, str]:
    """The headers of a keeper's or a watcher's message about ``line``: the default line's
    carry none, so replicas of a release without pools keep understanding each other."""
    headers = {MESSAGE_KIND_HEADER: kind}
    if line is not None and line != default.task_queue.name:
        headers[LINE_HEADER] = line
    return headers
