"""The keeper of the queue log: the one API replica that follows the waiting line.

Tasks are published to the intake exchange, which routes each one into the task queue and
into the queue log (a stream) in the same order. A worker appends a ``left`` record when it
takes a task, and a replica whose publish the queue refused appends ``withdrawn``. The keeper
follows the log, so it knows the tasks still waiting, in queue order, whichever replica queued
them: a task's position is one plus the number waiting ahead of it. Workers take tasks in
queue order (their prefetch is their concurrency), so positions fall by one as each task ahead
starts, and reach 1 before it starts.

Only the keeper pays for the log (docs/adr/0004-queue-positions-without-a-broadcast.md). It
publishes a **watermark** on the positions exchange when the line changes (at most every
``WATERMARK_MIN_S``) and at least every ``WATERMARK_IDLE_S``: the waiting count and the drain
rate, for every replica's admission control and ETAs, and the log offset where the line
begins. Replicas **watch** the sessions their clients wait for, and the keeper sends each of
them the positions (and owners) of its own watched sessions, on its live queue, when they
change.

The keeper is the replica whose connection holds an exclusive queue (``keeper_lock``): when
its connection goes, the broker deletes that queue, and the next replica to try takes over: a
replica tries every ``KEEPER_RETRY_S`` once no watermark has come for ``KEEPER_SILENT_S``. A
new keeper reads the last watermark from the watermarks stream and follows the log from the
offset where the line began: what it reads is the line, not the log's hour.

A ``left`` record can be lost with a worker's connection, or a task can leave the queue
without one (a purge, a worker of an older release). Such ghosts would hold positions up
forever: the line's length is compared with the queue's real length, and entries at the head
that the queue no longer holds, twice in a row, are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.abc import FieldTable
from mqcommon.errors import BrokerUnavailable
from mqcommon.schemas import (
    POSITIONS,
    QUEUED,
    MalformedMessage,
    Positions,
    QueueEvent,
    Watch,
    Watermark,
)
from mqcommon.topology import Topology, declare_queue

from llm_stream_api import metrics
from llm_stream_api.broker.connection import SEND_ERRORS, BrokerConnection, line_headers
from llm_stream_api.quota.rates import RateMeter

log = structlog.get_logger(__name__)

PREFETCH = 2000
WINDOW_S = 3600.0  # the log's retention: nobody waits longer than that
RATE_WINDOW_S = 30.0
UPDATE_DELAY_S = 0.02  # positions are recomputed once per burst of records, not per record
WATERMARK_MIN_S = 0.25
WATERMARK_IDLE_S = 1.0
NEAR_BOUND_SHARE = 20  # within a twentieth of MAX_QUEUED_TASKS, every change is sent at once
RECONCILE_S = 5.0
KEEPER_RETRY_S = 2.0
KEEPER_SILENT_S = 3.0  # a replica tries to take over once no watermark came for this long
WATCH_TTL_S = 10.0  # a replica renews its watches every WATCH_RENEW_S (queue_positions)
LAST_WATERMARK_WAIT_S = 2.0

Where = tuple[int | None, str | None]  # a position (None: not waiting) and an owner


class WaitingLine:
    """The waiting tasks in queue order, from the records of the queue log."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # session id -> (the key id that created it or None, the log offset of its task)
        self._waiting: OrderedDict[str, tuple[str | None, int]] = OrderedDict()
        self._left = RateMeter(RATE_WINDOW_S)
        self._suspects: list[str] = []
        self.last_offset = -1
        self.left_total = 0

    def apply(self, event: QueueEvent, offset: int = -1) -> None:
        if offset >= 0:
            self.last_offset = max(self.last_offset, offset)
        if event.kind == QUEUED:
            self._waiting[event.session_id] = (event.owner, offset)
        elif event.session_id in self._waiting:
            del self._waiting[event.session_id]
            if event.kind == "left":
                self.left_total += 1
                self._left.record(event.at or self._clock())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def head(self) -> int:
        """The log offset of the oldest waiting task; the next offset when none waits."""
        for _, offset in self._waiting.values():
            return offset
        return self.last_offset + 1

    def drain_rate(self) -> float:
        """Tasks leaving the queue per second (``quota.rates.RateMeter``, over ``RATE_WINDOW_S``)."""
        return self._left.rate(self._clock())

    def eta(self, position: int) -> float | None:
        rate = self.drain_rate()
        return round(position / rate, 1) if rate > 0 else None

    def position_of(self, session_id: str) -> int | None:
        """1 for the next task to start; None when the task is not waiting (or not known yet)."""
        return self.where(session_id)[session_id][0]

    def owner_of(self, session_id: str) -> str | None:
        found = self._waiting.get(session_id)
        return found[0] if found else None

    def where(self, session_ids: Iterable[str]) -> dict[str, Where]:
        """Position and owner of each session, in one pass over the line."""
        wanted = set(session_ids)
        found: dict[str, Where] = {sid: (None, None) for sid in wanted}
        remaining = sum(1 for sid in wanted if sid in self._waiting)
        for index, (sid, (owner, _)) in enumerate(self._waiting.items()):
            if remaining == 0:
                break
            if sid in wanted:
                found[sid] = (index + 1, owner)
                remaining -= 1
        return found

    def reconcile(self, queue_length: int) -> int:
        """The queue holds ``queue_length`` waiting tasks: drop entries at the head of the line
        that it cannot hold, if they were already suspect last time. Returns how many."""
        excess = len(self._waiting) - queue_length
        head = [session_id for session_id, _ in zip(self._waiting, range(max(excess, 0)), strict=False)]
        ghosts = [session_id for session_id in head if session_id in self._suspects]
        self._suspects = head
        for session_id in ghosts:
            self._waiting.pop(session_id, None)
        if ghosts:
            log.warning("queue log entries the queue no longer holds; dropped", count=len(ghosts))
        return len(ghosts)


class QueueKeeper:
    def __init__(
        self, broker: BrokerConnection, queue_length: Callable[[], Awaitable[int]], *,
        line: str | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        """``queue_length``: the task queue's ready messages (``broker.queue_depth``); ``line``:
        the task queue whose log this keeps (None: the default line)."""
        self._broker = broker
        self.line_name = line
        self._queue_length = queue_length
        self._clock = clock
        self.line = WaitingLine(clock=clock)
        self.active = False
        self.heard_at = -KEEPER_SILENT_S  # when a keeper's watermark last arrived (monotonic)
        # Positions for the replica itself go straight to it (``queue_positions``), not round the broker.
        self.deliver_locally: Callable[[Positions], None] = lambda _: None
        self.watermark_locally: Callable[[Watermark], None] = lambda _: None
        self._watchers: dict[str, dict[str, Where]] = {}  # replica -> its watched sessions, as last sent
        self._watch_seen: dict[str, float] = {}
        self._channel: AbstractChannel | None = None
        self._lock_channel: AbstractChannel | None = None
        self._update: asyncio.TimerHandle | None = None
        self._watermark_sent: tuple[float, tuple[int, int, int, float]] | None = None
        bound = broker.settings.max_queued_tasks
        self._near_bound = bound - max(1, bound // NEAR_BOUND_SHARE)
        # Dropped as soon as the connection goes: aio-pika would otherwise restore the log's
        # consumer with the connection, and a node without a running replica of the stream
        # (one that has just started again) refuses it, failing the whole reconnection.
        broker.when_lost(self._deposed)

    @property
    def _topology(self) -> Topology:
        return self._broker.topology_of(self.line_name) if self.line_name else self._broker.topology

    # -- becoming the keeper -----------------------------------------------------------------

    async def run_forever(self) -> None:
        """Try to become the keeper, and keep the line while it is."""
        while True:
            if self.active:
                await self._publish_watermark(self._watermark_due(force=self._idle()))
                await self._maybe_reconcile()
                await asyncio.sleep(WATERMARK_IDLE_S / 2)
            elif not self._broker.connected:
                await asyncio.sleep(0.1)  # try as soon as the connection is up
            elif time.monotonic() - self.heard_at < KEEPER_SILENT_S:
                await asyncio.sleep(KEEPER_RETRY_S)  # a keeper speaks: nothing to take over
            else:
                try:
                    await self._try_to_keep()
                except SEND_ERRORS as exc:
                    log.warning("queue keeper could not start; retrying", error=str(exc))
                    await self._stop_keeping()
                if not self.active:
                    await asyncio.sleep(KEEPER_RETRY_S)

    async def _try_to_keep(self) -> None:
        connection = self._broker.connection
        if connection is None:
            return
        lock = await connection.channel()
        underlay = await lock.get_underlay_channel()
        try:
            # Declared on the underlying channel: a robust channel would declare it again on a
            # reconnect, and the lock must be won again, not restored.
            await underlay.queue_declare(self._topology.keeper_lock, exclusive=True, auto_delete=True)
        except SEND_ERRORS:
            with contextlib.suppress(*SEND_ERRORS):
                await lock.close()
            return  # another replica keeps the line
        self._lock_channel = lock
        head = await self._last_head()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        stream = await declare_queue(channel, self._topology.queue_log_stream)
        since: object = head
        if head is None:
            since = dt.datetime.fromtimestamp(self._clock() - WINDOW_S, dt.UTC)
        self.line = WaitingLine(clock=self._clock)
        self._channel = channel
        self.active = True
        metrics.QUEUE_KEEPER.inc()
        arguments: FieldTable = {"x-stream-offset": since}  # type: ignore[dict-item]
        await stream.consume(self._on_record, arguments=arguments)
        log.info(
            "keeping the queue log", replica=self._broker.replica_id, line=self.line_name, from_offset=head
        )

    async def _last_head(self) -> int | None:
        """Where the line began by the last watermark in the watermarks stream; None if none."""
        connection = self._broker.connection
        if connection is None:
            return None
        channel = await connection.channel()
        found: list[Watermark] = []
        arrived = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()
            with contextlib.suppress(MalformedMessage):
                found.append(Watermark.decode(message.body))
            arrived.set()

        try:
            await channel.set_qos(prefetch_count=100)
            stream = await declare_queue(channel, self._topology.watermarks_stream)
            if not stream.declaration_result.message_count:
                return None  # no keeper ever kept this line
            await stream.consume(on_message, arguments={"x-stream-offset": "last"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAST_WATERMARK_WAIT_S):
                    await arrived.wait()
                    await asyncio.sleep(0.05)  # the rest of the last chunk
        finally:
            with contextlib.suppress(*SEND_ERRORS):
                await channel.close()
        return found[-1].head if found else None

    def _deposed(self) -> None:
        """The connection went: the broker deleted the lock, and another replica may keep now."""
        if self.active:
            log.warning("no longer keeping the queue log (connection lost)")
        self._broker.send_soon(self._stop_keeping())

    async def _stop_keeping(self) -> None:
        if self.active:
            metrics.QUEUE_KEEPER.dec()
        self.active = False
        self._watchers.clear()
        for channel in (self._channel, self._lock_channel):
            if channel is not None:
                with contextlib.suppress(*SEND_ERRORS):
                    await channel.close()
        self._channel = self._lock_channel = None

    # -- reading the log ---------------------------------------------------------------------

    async def _on_record(self, message: AbstractIncomingMessage) -> None:
        await message.ack()  # a stream consumer gets more only as it acknowledges
        metrics.count_delivery("queue_log", len(message.body))
        headers = message.headers or {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int):
            if offset <= self.line.last_offset:
                return  # already applied (a consumer restarted from an earlier offset)
        event = QueueEvent.from_headers(headers)
        if event is not None:
            self.line.apply(event, offset if isinstance(offset, int) else -1)
            self._changed()

    def _changed(self) -> None:
        if self._update is None:
            self._update = asyncio.get_running_loop().call_later(UPDATE_DELAY_S, self._send_updates)

    def _send_updates(self) -> None:
        self._update = None
        # The count first, so that a reader told its position finds admission as current.
        self._broker.send_soon(self._publish_watermark(self._watermark_due(force=False)))
        for replica in list(self._watchers):
            self._send_positions(replica)

    # -- telling the replicas ----------------------------------------------------------------

    def watermark(self) -> Watermark:
        line = self.line
        return Watermark(
            self._broker.replica_id, line.head, line.waiting, line.left_total, round(line.drain_rate(), 4),
            at=self._clock(),
        )

    def _idle(self) -> bool:
        return self._watermark_sent is None or time.monotonic() - self._watermark_sent[0] >= WATERMARK_IDLE_S

    def _watermark_due(self, *, force: bool) -> Watermark | None:
        """The watermark to send now, if one is due: on a change, at most every
        ``WATERMARK_MIN_S``, except near MAX_QUEUED_TASKS, where admission control needs the
        count as it is; and at least every ``WATERMARK_IDLE_S``. Applied here at once."""
        if not self.active:
            return None
        mark = self.watermark()
        state = (mark.head, mark.waiting, mark.left, mark.rate)
        now = time.monotonic()
        if not force and self._watermark_sent is not None:
            sent_at, sent_state = self._watermark_sent
            if sent_state == state:
                return None
            near_bound = mark.waiting >= self._near_bound
            if now - sent_at < WATERMARK_MIN_S and not near_bound:
                self._changed_later(WATERMARK_MIN_S - (now - sent_at))
                return None
        self._watermark_sent = (now, state)
        self.watermark_locally(mark)
        return mark

    async def _publish_watermark(self, mark: Watermark | None) -> None:
        if mark is not None:
            exchange = self._topology.positions_exchange.name
            await self._broker.send(exchange, mark.encode(), what="watermark")

    def _changed_later(self, delay_s: float) -> None:
        if self._update is None:
            self._update = asyncio.get_running_loop().call_later(delay_s, self._send_updates)

    def heard(self) -> None:
        """A keeper's watermark arrived (maybe this replica's own)."""
        self.heard_at = time.monotonic()

    def on_watch(self, watch: Watch) -> None:
        """A replica's whole set of watched sessions: answer what is new or changed."""
        if not self.active:
            return
        self._watch_seen[watch.replica] = time.monotonic()
        before = self._watchers.get(watch.replica, {})
        self._watchers[watch.replica] = {sid: before.get(sid, (-1, None)) for sid in watch.sessions}
        self._send_positions(watch.replica)

    def _send_positions(self, replica: str) -> None:
        watched = self._watchers.get(replica)
        if watched is None:
            return
        if time.monotonic() - self._watch_seen.get(replica, 0.0) > WATCH_TTL_S:
            del self._watchers[replica]  # the replica stopped renewing: gone, or no reader left
            return
        now = self.line.where(watched)
        changed = {sid: where for sid, where in now.items() if watched.get(sid) != where}
        if not changed:
            return
        watched.update(changed)
        answer = Positions(self._broker.replica_id, round(self.line.drain_rate(), 4), changed)
        if replica == self._broker.replica_id:
            self.deliver_locally(answer)
            return
        self._broker.send_soon(self._publish_positions(replica, answer))

    async def _publish_positions(self, replica: str, answer: Positions) -> None:
        await self._broker.send(
            self._broker.topology.live_exchange.name, answer.encode(), routing_key=replica,
            headers=line_headers(POSITIONS, self.line_name, self._broker.topology), what="positions",
        )

    # -- ghosts ------------------------------------------------------------------------------

    _reconciled_at = 0.0

    async def _maybe_reconcile(self) -> None:
        now = time.monotonic()
        if now - self._reconciled_at < RECONCILE_S or not self.line.waiting:
            return
        self._reconciled_at = now
        try:
            length = await self._queue_length()
        except BrokerUnavailable as exc:  # the broker is away: try again later
            log.debug("queue length unavailable", error=str(exc))
            return
        if self.line.reconcile(length):
            self._changed()
