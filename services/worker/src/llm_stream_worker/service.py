"""The worker process: consume tasks with bounded concurrency, watch for abandoned sessions,
and shut down without losing work."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import AMQPError
from mqcommon.connection import connect, process_age_s, process_name, watch_for_stalls
from mqcommon.errors import BrokerUnavailable
from mqcommon.llm import make_client
from mqcommon.pools import DEFAULT_LANE
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import LEFT, HistoryRecord, MalformedMessage, Presence, QueueEvent
from mqcommon.topology import Topology, declare_exchange, declare_queue

from llm_stream_worker import dead_letters, generation, http, metrics
from llm_stream_worker.cancels import CancelFeed
from llm_stream_worker.lanes import LaneGate
from llm_stream_worker.outbox import Outbox
from llm_stream_worker.presence import PresenceTracker
from llm_stream_worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

WATCHDOG_INTERVAL_S = 1.0
NOTICES_PREFETCH = 10


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        # Each lane of the pool is a task queue with its own queue log (docs/adr/0006); the
        # default lane's topology also names what the lanes share.
        self.lanes = [(line, Topology.from_settings(names)) for line, names in settings.lines()]
        self.topology = next(topology for line, topology in self.lanes if line.lane == DEFAULT_LANE)
        # What this worker consumes: every shard of every lane, each with its lane's rank.
        self.feeds = [
            (rank, queue) for rank, (_, topology) in enumerate(self.lanes) for queue in topology.task_queues
        ]
        # Several feeds share the generation slots; one feed's prefetch is the limit itself.
        self.gate = (
            LaneGate(settings.worker_concurrency, len(self.lanes), settings.lane_min_share)
            if len(self.feeds) > 1 else None
        )
        self.llm = make_client(settings, max_connections=settings.worker_concurrency + 8)
        self.presence = PresenceTracker(settings.abandon_timeout_s)
        self.running: dict[str, generation.Running] = {}
        # Sessions clients cancelled: a task for one of them is dropped when it arrives.
        self.cancelled: dict[str, float] = {}
        self.cancels = CancelFeed(
            self.topology.cancels_stream, window_s=settings.cancel_keep_s, on_cancel=self._cancel
        )
        self._connection: AbstractRobustConnection | None = None
        self._stall_watch: asyncio.Task[None] | None = None
        self._prefetch = settings.worker_concurrency  # of each feed, once consuming
        self._history_channel: AbstractChannel | None = None
        self._live_exchange: aio_pika.abc.AbstractExchange | None = None
        self._log_channel: AbstractChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._held: dict[int, set[asyncio.Task[None]]] = {}  # per feed: tasks waiting for a slot
        self._stopping = False
        self.started_in_s: float | None = None  # from process start to consuming, once
        self.outbox = Outbox(
            self._send_live,
            producer=process_name("worker"),
            flush_interval_s=settings.flush_interval_ms / 1000,
            flush_max_bytes=settings.flush_max_bytes,
            route_ttl_s=settings.abandon_timeout_s,
            keep_ended_s=settings.keep_ended_s,
        )

    def holds(self) -> int:
        """Most tasks this worker may hold delivered but not started (see the gate)."""
        if self.gate is None:
            return 0
        return max(0, len(self.feeds) * self._prefetch - self.settings.worker_concurrency)

    # -- lifecycle -----------------------------------------------------------------------

    def is_ready(self) -> bool:
        return (
            not self._stopping
            and self._connection is not None
            and not self._connection.is_closed
            and len(self._consumers) == len(self.feeds)
        )

    async def start(self) -> None:
        """Connect, declare the topology and start consuming; on failure nothing stays open."""
        self._connection = await connect(
            self.settings.rabbit_mq, "worker", heartbeat_s=self.settings.amqp_heartbeat_s
        )
        try:
            await self._consume()
        except BaseException:
            await self._connection.close()
            self._connection = None
            raise
        if self.settings.broker_stall_s > 0:
            self._stall_watch = asyncio.create_task(
                watch_for_stalls(self._connection, self.settings.broker_stall_s), name="broker-stalls"
            )

    async def _consume(self) -> None:
        assert self._connection is not None
        self.lanes = [(line, await topology.declare(self._connection)) for line, topology in self.lanes]
        self.topology = next(topology for line, topology in self.lanes if line.lane == DEFAULT_LANE)

        self._history_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        # Live frames are not confirmed: a replica that misses one sees the gap and asks again.
        live_channel = await self._connection.channel(publisher_confirms=False)
        self._live_exchange = await declare_exchange(live_channel, self.topology.live_exchange)
        self._log_channel = live_channel
        # Before the first task: a task cancelled while queued must never reach the LLM.
        await self.cancels.start(
            self._connection, self._history_channel,
            confirm_timeout_s=self.settings.confirm_timeout_s, stream=self.topology.cancels_stream,
        )

        presence_channel = await self._connection.channel()
        presence_exchange = await declare_exchange(presence_channel, self.topology.presence_exchange)
        presence_queue = await presence_channel.declare_queue(exclusive=True, auto_delete=True)
        await presence_queue.bind(presence_exchange)
        await presence_queue.consume(self._on_presence, no_ack=True)

        notices_channel = await self._connection.channel()
        await notices_channel.set_qos(prefetch_count=NOTICES_PREFETCH)
        notices = await declare_queue(notices_channel, self.topology.dead_letter_notices)
        await notices.consume(self._on_dead_letter)

        self.feeds = [  # as declared
            (rank, queue) for rank, (_, topology) in enumerate(self.lanes) for queue in topology.task_queues
        ]
        shards = len(self.lanes[0][1].task_queues)
        # A lane's shards share its prefetch, so the worker holds few tasks it cannot start yet
        # (a held task keeps its place in the line, and the line's length stays that of the queues).
        prefetch = self._prefetch = -(-self.settings.worker_concurrency // shards)
        self._consumers = []
        for feed, (_, spec) in enumerate(self.feeds):
            tasks_channel = await self._connection.channel()
            tasks_channel.close_callbacks.add(functools.partial(self._deliveries_lost, feed))
            await tasks_channel.set_qos(prefetch_count=prefetch)
            # Declared (not merely looked up) so the robust channel re-consumes after a reconnect.
            queue = await declare_queue(tasks_channel, spec)
            self._consumers.append((queue, await queue.consume(functools.partial(self._on_task, feed))))
        metrics.TASK_CONCURRENCY_LIMIT.set(self.settings.worker_concurrency)
        if self.started_in_s is None:
            self.started_in_s = process_age_s()
        log.info(
            "worker consuming", started_in_s=self.started_in_s,
            pool=self.settings.llm_pool,
            queues=[spec.name for _, spec in self.feeds],
            concurrency=self.settings.worker_concurrency,
            llm_base_url=self.settings.openai_base_url or "https://api.openai.com/v1",
        )

    async def run_watchdog(self) -> None:
        """Cancel generations whose session no API process serves any more."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            connected = self._connection is not None and not self._connection.is_closed
            metrics.BROKER_CONNECTED.set(1 if connected else 0)
            for run in list(self.running.values()):
                if run.cancel_reason is None and self.presence.is_abandoned(
                    run.session_id, run.started_at
                ):
                    run.cancel_reason = generation.ABANDONED
                    if run.task is not None:
                        run.task.cancel()
            self.presence.prune()
            self.outbox.prune()
            horizon = self.presence.now() - self.settings.cancel_keep_s
            for session_id in [s for s, at in self.cancelled.items() if at < horizon]:
                del self.cancelled[session_id]

    async def shutdown(self) -> None:
        """Stop taking tasks, let in-flight ones finish within the grace period, requeue the rest."""
        self._stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        for held in self._held.values():
            for task in held:
                task.cancel()  # not started: requeued as it is
        pending = [run.task for run in self.running.values() if run.task is not None]
        log.info("shutting down", in_flight=len(pending), grace_s=self.settings.shutdown_grace_s)
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_s)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.wait(still_running, timeout=10)
        await self.outbox.drain()
        if self._stall_watch is not None:
            self._stall_watch.cancel()
        if self._connection is not None:
            await self._connection.close()
        await self.llm.close()

    # -- callbacks -----------------------------------------------------------------------

    async def _on_presence(self, message: AbstractIncomingMessage) -> None:
        try:
            presence = Presence.decode(message.body)
        except MalformedMessage as exc:
            metrics.MALFORMED.inc()
            log.warning("ignoring a malformed presence message", error=str(exc)[:200])
            return
        self.presence.observe(presence.served)
        replica = presence.replica
        if replica is None:
            return
        for session_id in presence.want:
            self.outbox.interest(replica, session_id, replay=True)
        for session_id in (*presence.served, *presence.tracked):
            self.outbox.interest(replica, session_id, replay=False)

    def _deliveries_lost(self, feed: int, *_: object) -> None:
        """A feed's tasks channel closed (a broker restart, a lost connection): the broker
        requeues every unacknowledged task, so the generations of those deliveries stop here
        rather than run twice, and those waiting for a slot never start."""
        if self._stopping:
            return
        for task in self._held.get(feed, ()):
            task.cancel()
        lost = [
            run for run in self.running.values()
            if run.cancel_reason is None and run.task is not None and run.feed == feed
        ]
        if lost:
            log.warning("tasks channel closed; stopping the generations of its deliveries", count=len(lost))
        for run in lost:
            run.cancel_reason = generation.LOST
            run.task.cancel()

    def _cancel(self, session_id: str) -> None:
        """Stop the session's generation if it runs here; drop its task if it comes later."""
        if session_id not in self.cancelled:
            log.info("cancel requested", session_id=session_id)
        self.cancelled[session_id] = self.presence.now()
        for run in self.running.values():
            if run.session_id == session_id and run.cancel_reason is None and run.task is not None:
                run.cancel_reason = generation.CANCELLED
                run.task.cancel()

    async def _on_task(self, feed: int, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await message.nack(requeue=True)
            return
        if self.gate is not None:
            held = asyncio.create_task(self._when_a_slot_frees(feed, message))
            self._held.setdefault(feed, set()).add(held)
            held.add_done_callback(self._held[feed].discard)
            return
        await self._start(feed, message)

    async def _when_a_slot_frees(self, feed: int, message: AbstractIncomingMessage) -> None:
        """Hold a task of ``feed`` until the gate gives its lane a slot; one that never gets it
        (shutdown, a lost channel) goes back to its queue where it was."""
        assert self.gate is not None
        try:
            await self.gate.acquire(self.feeds[feed][0])
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            raise
        # Started from here on: what stops it now is what stops any generation.
        self._held[feed].discard(asyncio.current_task())  # type: ignore[arg-type]
        if self._stopping:
            self.gate.release()
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        try:
            await self._start(feed, message)
        except BaseException:
            self.gate.release()
            raise

    async def _start(self, feed: int, message: AbstractIncomingMessage) -> None:
        key = f"{message.delivery_tag}:{id(message)}"
        run = generation.Running(session_id=_session_hint(message), started_at=self.presence.now(), feed=feed)
        # Sent as it starts, not as it arrives: a task held for a slot keeps its position.
        await self._left_queue(run.session_id, self.feeds[feed][0])
        self.running[key] = run
        metrics.TASKS_IN_PROGRESS.inc()
        run.task = asyncio.create_task(self._process(key, message, run))

    async def _process(self, key: str, message: AbstractIncomingMessage, run: generation.Running) -> None:
        try:
            await generation.process(
                message, run, settings=self.settings, llm=self.llm, outbox=self.outbox,
                record=self._record, is_cancelled=self.cancelled.__contains__,
            )
        except asyncio.CancelledError:
            pass  # settled inside; the task ends here
        except Exception:
            log.exception("unexpected failure; requeueing task")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            metrics.TASKS.labels("retried").inc()
        finally:
            self.running.pop(key, None)
            metrics.TASKS_IN_PROGRESS.dec()
            if self.gate is not None:
                self.gate.release()

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        await dead_letters.on_notice(message, self.outbox, self._record)

    async def _left_queue(self, session_id: str, rank: int) -> None:
        """Tell the queue log this task left the queue: the positions of those behind it move up.

        Not confirmed, like live frames: a record lost with a connection is reconciled by the
        API replicas against the queue's length.
        """
        if self._log_channel is None or not session_id:
            return
        event = QueueEvent(LEFT, session_id, at=time.time())
        try:
            await self._log_channel.default_exchange.publish(
                aio_pika.Message(b"", headers=event.headers()),
                routing_key=self.lanes[rank][1].queue_log_stream.name,
            )
        except (aio_pika.exceptions.AMQPException, AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("queue log record not sent", session_id=session_id, error=str(exc))

    async def _send_live(self, replica: str, body: bytes) -> None:
        if self._live_exchange is None:
            raise BrokerUnavailable("not connected to the broker")
        await self._live_exchange.publish(
            aio_pika.Message(body, content_type="application/json"), routing_key=replica, mandatory=False
        )

    async def _record(self, record: HistoryRecord) -> None:
        if self._history_channel is None:
            raise BrokerUnavailable("not connected to the broker")
        await publish_confirmed(
            self._history_channel,
            self.topology.events_stream.name,
            record.encode(),
            timeout_s=self.settings.confirm_timeout_s,
            persistent=True,
            headers=record.headers(),
        )
        metrics.EVENT_BATCHES.inc()


def _session_hint(message: AbstractIncomingMessage) -> str:
    """The session id, from a header so the watchdog need not parse the body."""
    value = (message.headers or {}).get("session_id")
    return str(value) if value is not None else ""


async def start_metrics_server(worker: Worker) -> asyncio.Server | None:
    if not worker.settings.metrics_port:
        return None
    return await http.serve(worker.settings.metrics_host, worker.settings.metrics_port, worker.is_ready)
