"""Where each waiting task stands in the task queue, the same on every API replica.

Tasks are published to the intake exchange, which routes each one into the task queue and
into the queue log (a stream) in the same order. A worker appends a ``left`` record when it
takes a task, and a replica whose publish the queue refused appends ``withdrawn``. Every
replica follows the log, so it knows the tasks still waiting, in queue order, whichever
replica queued them: a task's position is one plus the number waiting ahead of it. Workers
take tasks in queue order (their prefetch is their concurrency), so positions fall by one as
each task ahead starts, and reach 1 before it starts.

The drain rate (tasks leaving per second, over the last ``RATE_WINDOW_S``) gives each
position an ETA and the 503s of a full queue their ``Retry-After``.

A ``left`` record can be lost with a worker's connection, or a task can leave the queue
without one (a purge, a worker of an older release). Such ghosts would hold positions up
forever: the log's waiting count is compared with the queue's real length, and entries at the
head that the queue no longer holds, twice in a row, are dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from mqcommon.schemas import QUEUED, QueueEvent
from mqcommon.topology import QueueSpec, declare_queue

from llm_stream_api.quota.rates import RateMeter
from llm_stream_api.sessions.hub import Session

log = structlog.get_logger(__name__)

PREFETCH = 2000
WINDOW_S = 3600.0  # the log's retention: nobody waits longer than that
RATE_WINDOW_S = 30.0
UPDATE_DELAY_S = 0.02  # positions are recomputed once per burst of records, not per record
RECONCILE_S = 5.0


class QueueTracker:
    def __init__(self, stream: QueueSpec, *, clock: Callable[[], float] = time.time) -> None:
        self._stream = stream
        self._clock = clock
        # The waiting tasks in queue order, each with the key id that created it (None: keys off).
        self._waiting: OrderedDict[str, str | None] = OrderedDict()
        self._left = RateMeter(RATE_WINDOW_S)
        self._watched: dict[str, Session] = {}
        self._last_offset = -1
        self._update: asyncio.TimerHandle | None = None
        self._suspects: list[str] = []

    # -- reading the log -------------------------------------------------------------------

    async def start(self, channel: AbstractChannel) -> None:
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await declare_queue(channel, self._stream)
        since = dt.datetime.fromtimestamp(self._clock() - WINDOW_S, dt.UTC)
        # After a reconnect the robust channel consumes again from ``since``: offsets already
        # applied are skipped.
        await queue.consume(self._on_message, arguments={"x-stream-offset": since})

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()  # a stream consumer gets more only as it acknowledges
        headers = message.headers or {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int):
            if offset <= self._last_offset:
                return
            self._last_offset = offset
        event = QueueEvent.from_headers(headers)
        if event is not None:
            self.apply(event)

    def apply(self, event: QueueEvent) -> None:
        if event.kind == QUEUED:
            self._waiting[event.session_id] = event.owner
        elif event.session_id in self._waiting:
            del self._waiting[event.session_id]
            if event.kind == "left":
                self._left.record(event.at or self._clock())
        self._changed()

    # -- what clients see -------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def drain_rate(self) -> float:
        """Tasks leaving the queue per second (``rates.RateMeter``, over ``RATE_WINDOW_S``)."""
        return self._left.rate(self._clock())

    def eta(self, position: int) -> float | None:
        rate = self.drain_rate()
        return round(position / rate, 1) if rate > 0 else None

    def position_of(self, session_id: str) -> int | None:
        """1 for the next task to start; None when the task is not waiting (or not known yet)."""
        if session_id not in self._waiting:
            return None
        for index, waiting in enumerate(self._waiting):
            if waiting == session_id:
                return index + 1
        return None

    def owner_of(self, session_id: str) -> str | None:
        """The key id that created a waiting task, as its ``queued`` record says; None when
        the task is not waiting, or was queued with keys off."""
        return self._waiting.get(session_id)

    def seconds_until(self, excess: int) -> int:
        """Whole seconds until ``excess`` more tasks have left, at the measured drain rate."""
        rate = self.drain_rate()
        if rate <= 0:
            return 0
        return math.ceil(excess / rate)

    def watch(self, session: Session) -> None:
        """Keep ``session.queue_position`` current while it waits (a reader follows it); the
        first position comes with the next batch of updates, within ``UPDATE_DELAY_S``."""
        self._watched[session.id] = session
        self._changed()

    def unwatch(self, session: Session) -> None:
        if session.readers <= 0:
            self._watched.pop(session.id, None)

    def _changed(self) -> None:
        if self._update is None and self._watched:
            self._update = asyncio.get_running_loop().call_later(UPDATE_DELAY_S, self._update_positions)

    def _update_positions(self) -> None:
        self._update = None
        if not self._watched:
            return
        positions = {}
        for index, session_id in enumerate(self._waiting):
            if session_id in self._watched:
                positions[session_id] = index + 1
                if len(positions) == len(self._watched):
                    break
        for session_id, session in list(self._watched.items()):
            if session.started or session.ended:
                del self._watched[session_id]
                self._set_position(session, None)
            elif session_id in positions:
                self._set_position(session, positions[session_id])
            elif session.queue_position is not None:
                # It left the queue (a worker took it, so it was at the head) and its first
                # frame has not arrived yet: several free workers take several tasks at once.
                self._set_position(session, 1)

    def _set_position(self, session: Session, position: int | None) -> None:
        if position != session.queue_position:
            session.queue_position = position
            session.notify()

    # -- ghosts ------------------------------------------------------------------------------

    def reconcile(self, queue_length: int) -> int:
        """The queue holds ``queue_length`` tasks (waiting or being generated): drop entries at
        the head of the log that it cannot hold, if they were already suspect last time.
        Returns how many were dropped."""
        excess = len(self._waiting) - queue_length
        head = [session_id for session_id, _ in zip(self._waiting, range(max(excess, 0)), strict=False)]
        ghosts = [session_id for session_id in head if session_id in self._suspects]
        self._suspects = head
        for session_id in ghosts:
            self._waiting.pop(session_id, None)
        if ghosts:
            log.warning("queue log entries the queue no longer holds; dropped", count=len(ghosts))
            self._changed()
        return len(ghosts)

    async def reconcile_forever(self, queue_length: Callable[[], Awaitable[int]]) -> None:
        while True:
            await asyncio.sleep(RECONCILE_S)
            if not self._waiting:
                continue
            try:
                self.reconcile(await queue_length())
            except Exception as exc:  # the broker is away: try again later
                log.debug("queue length unavailable", error=str(exc))
