"""The API's side of the broker: publish tasks, receive live frames, find sessions it lacks.

The connection is made in the background and retried, so the API starts (and answers
``/health``) while the broker is down; ``/health/full`` reports the truth. Nothing is read
ahead at start-up: a replica is ready as soon as its live queue is consumed, and history is
read on demand (``discover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.connection import broker_version, connect, process_name
from mqcommon.errors import BrokerUnavailable, PublishRefused
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import QUEUED, WITHDRAWN, ChatTask, HistoryRecord, Presence, QueueEvent, id_time
from mqcommon.topology import Topology, declare_exchange
from mqcommon.tracing import TRACEPARENT_HEADER, trace_id_of

from llm_stream_api import metrics
from llm_stream_api.history import History
from llm_stream_api.hub import Session, SessionHub
from llm_stream_api.live import LiveFeed
from llm_stream_api.queue_position import QueueTracker
from llm_stream_api.settings import APISettings

log = structlog.get_logger(__name__)

CONNECT_RETRY_S = 2.0
SWEEP_INTERVAL_S = 5.0
WANT_FLUSH_S = 0.005
# A running session's replay from its worker usually arrives within milliseconds; only when it
# does not is the history read. A session the API named less than YOUNG_S ago is queued,
# running or just ended (workers keep ended answers KEEP_ENDED_S, 15 s), so a worker answers
# or will route it here when it starts: its history is read later, only if still silent.
REPLAY_GRACE_S = 0.15
YOUNG_S = 10.0
YOUNG_GRACE_S = 2.0
STREAM_FILTERING_SINCE = (3, 13)
RECONNECT_REPLAY_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """``cancelled``: it ended cancelled. ``finished``: it had already ended (``end`` says how).
    ``cancelling``: not ended yet (queued: its task is dropped when a worker takes it).
    ``not_found``: no replica or worker knows it."""

    status: str
    end: str | None = None


class Broker:
    def __init__(self, settings: APISettings, hub: SessionHub) -> None:
        self.settings = settings
        self.hub = hub
        self.topology = Topology.from_settings(settings)
        self.replica_id = f"{process_name('api')}:{uuid.uuid4().hex[:8]}"
        self.live = LiveFeed(hub, self.topology.live_exchange, self.replica_id)
        self.history = History(
            self.topology.events_stream, window_s=settings.session_ttl_s,
            timeout_s=settings.history_timeout_s, concurrency=settings.history_lookups_max,
        )
        self.queue = QueueTracker(self.topology.queue_log_stream)
        hub.on_gap = self.resync
        self._wants: set[str] = set()
        self._want_timer: asyncio.TimerHandle | None = None
        self._discovering: dict[str, asyncio.Task[None]] = {}
        self._background_sends: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._intake: AbstractExchange | None = None
        self._stats_channel: AbstractChannel | None = None
        self._ready = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._stats_cache: tuple[float, dict[str, int]] | None = None

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
            asyncio.create_task(self.queue.reconcile_forever(self._ready_tasks), name="queue-reconcile"),
        ]

    async def wait_ready(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        for task in (*self._background, *self._discovering.values()):
            task.cancel()
        for task in (*self._background, *self._discovering.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    # -- publishing ------------------------------------------------------------------------

    async def enqueue(self, task: ChatTask, traceparent: str) -> Session:
        """Durably queue ``task``, then record its acceptance.

        Raises ``PublishRefused`` when the queue is full (its task is withdrawn from the queue
        log), ``BrokerUnavailable`` when the broker is down or does not confirm in time.

        Only the task's confirm is awaited. Its live frames come to this replica when the task
        names it in ``reply_to``; the acceptance marker on the history stream lets any other
        replica learn that the session exists while it is still queued.
        """
        if not self.connected or self._intake is None:
            raise BrokerUnavailable("not connected to the broker")
        entered = QueueEvent(QUEUED, task.session_id, at=task.created_at, owner=task.owner)
        try:
            await publish_confirmed(
                self._publish_channel, "", task.encode(),
                exchange=self._intake,
                timeout_s=self.settings.enqueue_timeout_s,
                persistent=True,
                headers={TRACEPARENT_HEADER: traceparent, **entered.headers()},
                message_id=task.task_id,
            )
        except PublishRefused:
            # The queue log took it; the queue did not: those behind it must not wait for it.
            self._send_soon(self._log(QueueEvent(WITHDRAWN, task.session_id, at=time.time())))
            raise
        trace_id = trace_id_of(traceparent)
        await self.history.accepted(task.session_id, task.created_at, trace_id, task.owner)
        return self.hub.accept(
            task.session_id, task.created_at, trace_id, tracked=task.reply_to == self.replica_id,
            owner=task.owner,
        )

    async def _log(self, event: QueueEvent) -> None:
        if self._publish_channel is None:
            return
        try:
            await self._publish_channel.default_exchange.publish(
                aio_pika.Message(b"", headers=event.headers()),
                routing_key=self.topology.queue_log_stream.name, timeout=self.settings.enqueue_timeout_s,
            )
        except (AMQPException, AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            log.warning("queue log record not sent", session_id=event.session_id, error=str(exc))

    def _send_soon(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background_sends.add(task)
        task.add_done_callback(self._background_sends.discard)

    async def _ready_tasks(self) -> int:
        return (await self.queue_stats())["messages"]

    # -- sessions this replica does not hold -----------------------------------------------

    def discover(self, session: Session) -> None:
        """A client asks for a session whose frames do not come here: ask for them.

        The workers replay it from offset 0 if it runs (or just ended) and route it here from
        now on; if no replay comes quickly, the history says whether it is queued or over.
        """
        session.tracked = True
        self._want(session.id)
        if session.id not in self._discovering:
            task = asyncio.create_task(self._look_up(session))
            self._discovering[session.id] = task
            task.add_done_callback(lambda _: self._discovering.pop(session.id, None))

    def resync(self, session_id: str) -> None:
        """Text went missing (a lost message): have it replayed, or read the transcript."""
        session = self.hub.get(session_id)
        if session is not None and session.tracked:
            self.discover(session)

    async def _look_up(self, session: Session) -> None:
        before = (session.started, len(session.text))
        queued_here = session.accepted_at is not None and not session.started
        made = id_time(session.id)
        young = made is not None and time.time() - made < YOUNG_S
        await asyncio.sleep(YOUNG_GRACE_S if young else REPLAY_GRACE_S)
        if session.ended or (session.started, len(session.text)) != before:
            return  # a worker answered: it runs, or has just finished
        if queued_here and young:
            return  # queued by this replica a moment ago: the worker that takes it routes it here
        try:
            records = await self.history.lookup(session.id)
        except BrokerUnavailable as exc:
            log.warning("history lookup failed", session_id=session.id, error=str(exc))
            return
        session.looked_up = True
        for record in records:
            self.hub.apply_record(record)
        session.notify()

    async def cancel(self, session_id: str) -> CancelOutcome:
        """Cancel a session from any replica; idempotent. Raises ``BrokerUnavailable``."""
        if not self.connected:
            raise BrokerUnavailable("not connected to the broker")
        session = self.hub.session(session_id)
        if not session.tracked:
            self.discover(session)
        # Until a worker replays it, or the history says whether it exists.
        deadline = time.monotonic() + YOUNG_GRACE_S + self.settings.history_timeout_s
        while not session.known and (finding := self._discovering.get(session_id)) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiter = asyncio.ensure_future(session.wait(remaining))
            await asyncio.wait([finding, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if session.ended:
            return self._outcome(session)
        if not session.known:
            return CancelOutcome("not_found")
        # Durable and read by every worker, also by one that starts after this.
        record = HistoryRecord("cancel", session_id, at=time.time())
        await publish_confirmed(
            self._publish_channel, self.topology.cancels_stream.name, record.encode(),
            timeout_s=self.settings.enqueue_timeout_s, headers=record.headers(),
        )
        deadline = time.monotonic() + self.settings.cancel_wait_s
        while not session.ended and (remaining := deadline - time.monotonic()) > 0:
            await session.wait(remaining)
        return self._outcome(session) if session.ended else CancelOutcome("cancelling")

    def cancel_soon(self, session_id: str) -> None:
        """Cancel without waiting (a client of a sync stream went away)."""
        self._send_soon(self._cancel_quietly(session_id))

    async def _cancel_quietly(self, session_id: str) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self.cancel(session_id)

    @staticmethod
    def _outcome(session: Session) -> CancelOutcome:
        if session.end_kind == "cancelled":
            return CancelOutcome("cancelled", "cancelled")
        return CancelOutcome("finished", session.end_kind)

    def _want(self, session_id: str) -> None:
        self._wants.add(session_id)
        if self._want_timer is None:
            self._want_timer = asyncio.get_running_loop().call_later(WANT_FLUSH_S, self._send_wants)

    def _send_wants(self) -> None:
        self._want_timer = None
        wants, self._wants = sorted(self._wants), set()
        if wants:
            self._send_soon(self._announce(Presence(self.replica_id, [], [], wants)))

    async def _announce(self, presence: Presence) -> None:
        if not self.connected or self._publish_channel is None:
            return
        try:
            exchange = await self._publish_channel.get_exchange(
                self.topology.presence_exchange.name, ensure=False
            )
            # Not mandatory: with no worker bound there is nobody to tell. What is lost is
            # repeated by the next periodic announcement.
            await exchange.publish(aio_pika.Message(presence.encode()), routing_key="", mandatory=False)
        except (AMQPException, AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            log.warning("presence announcement failed", error=str(exc))

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
                self.topology = await self.topology.declare(connection)
                self._publish_channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._intake = await declare_exchange(self._publish_channel, self.topology.intake_exchange)
                version = broker_version(connection)
                await self.history.start(
                    self._publish_channel,
                    await connection.channel(publisher_confirms=False),
                    await connection.channel(),
                    filtering=version >= STREAM_FILTERING_SINCE,
                )
                await self.live.start(await connection.channel())
                await self.queue.start(await connection.channel())
                connection.reconnect_callbacks.add(self._on_reconnect)
                self._connection = connection
                self._ready.set()
                metrics.BROKER_CONNECTED.set(1)
                log.info(
                    "connected to the broker", queue=self.topology.task_queue.name,
                    replica=self.replica_id, broker_version=".".join(map(str, version)),
                    stream_filtering=self.history.filtering,
                )
                return
            except (AMQPException, AMQPError, ConnectionError, OSError, RuntimeError) as exc:
                log.error(
                    "broker unreachable; retrying",
                    error=str(exc) or type(exc).__name__,
                    broker=self.settings.rabbit_mq.rsplit("@", 1)[-1],
                    retry_s=CONNECT_RETRY_S,
                )
                await asyncio.sleep(CONNECT_RETRY_S)

    def _on_reconnect(self, *_: object) -> None:
        """Frames sent while the connection was down are lost: have every open session replayed,
        once the live queue is bound again."""
        asyncio.get_running_loop().call_later(RECONNECT_REPLAY_DELAY_S, self._want_all)

    def _want_all(self) -> None:
        for session_id in self.hub.tracked_sessions():
            self._want(session_id)

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_interval_s)
            served, tracked = self.hub.served_sessions(), self.hub.tracked_sessions()
            if served or tracked:
                await self._announce(Presence(self.replica_id, served, tracked, []))

    async def _sweep_forever(self) -> None:
        while True:
            metrics.BROKER_CONNECTED.set(1 if self.connected else 0)
            metrics.HUB_SESSIONS.set(len(self.hub))
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.hub.sweep()
