"""Where this replica's waiting sessions stand, learnt from the keeper of the queue log.

Every replica follows the keeper's watermark (``broker.queue_keeper``): a few small messages a
second, whatever the traffic, which give the waiting count and the drain rate (admission
control, ETAs). For the sessions its clients wait for, and only while they wait, a replica
watches: it sends the keeper the set of those sessions, at once when it changes and again
every ``WATCH_RENEW_S``, while the watermark counts a waiting task (when none waits there is
no position to learn), and the keeper answers with each one's position and owner when they
change. So a replica pays for the sessions it serves, not for the cluster's tasks
(docs/adr/0004-queue-positions-without-a-broadcast.md).

A session that leaves the line (a worker took it) before its first frame arrives is reported
at position 1: it left from the head.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from mqcommon.schemas import WATCH, MalformedMessage, Positions, Watch, Watermark
from mqcommon.topology import declare_exchange

from llm_stream_api import metrics
from llm_stream_api.broker.connection import BrokerConnection, line_headers
from llm_stream_api.sessions.hub import Session, SessionHub

log = structlog.get_logger(__name__)

WATCH_FLUSH_S = 0.005
WATCH_RENEW_S = 2.0


class QueuePositions:
    def __init__(
        self, broker: BrokerConnection, hub: SessionHub, watch_locally: Callable[[Watch], None],
        heard: Callable[[], None] = lambda: None, *, line: str | None = None,
    ) -> None:
        """``watch_locally``: the keeper's ``on_watch``, for when this replica is the keeper;
        ``heard``: called on every watermark (the keeper is alive); ``line``: the task queue
        whose waiting line this follows (None: the default line)."""
        self._broker = broker
        self.line_name = line
        self._hub = hub
        self._watch_locally = watch_locally
        self._heard = heard
        self.mark: Watermark | None = None
        self._rate = 0.0
        self._watched: dict[str, Session] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._dirty = False  # the watched set changed since it was last sent
        self._sent_to: str | None = None  # the keeper the watches last went to
        self._sent_at = 0.0

    async def start(self, channel: AbstractChannel) -> None:
        """Follow the watermarks (an exclusive queue on the positions exchange)."""
        topology = self._broker.topology_of(self.line_name) if self.line_name else self._broker.topology
        exchange = await declare_exchange(channel, topology.positions_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_watermark_message, no_ack=True)

    async def _on_watermark_message(self, message: AbstractIncomingMessage) -> None:
        metrics.count_delivery("watermark", len(message.body))
        try:
            mark = Watermark.decode(message.body)
        except MalformedMessage as exc:
            metrics.MALFORMED.labels("watermark", exc.reason).inc()
            return
        self.on_watermark(mark)

    def on_watermark(self, mark: Watermark) -> None:
        self.mark = mark
        self._heard()
        self._rate = mark.rate
        if not self._watched and not self._dirty:
            return
        due = time.monotonic() - self._sent_at >= WATCH_RENEW_S
        if mark.waiting and (self._dirty or mark.keeper != self._sent_to or due):
            self._send_watches()  # tasks wait: a changed set, a new keeper, or time to renew

    # -- what admission control and readers ask ----------------------------------------------

    @property
    def waiting(self) -> int:
        """Tasks waiting in the queue, by the last watermark (0 before the first)."""
        return self.mark.waiting if self.mark else 0

    def drain_rate(self) -> float:
        """Tasks leaving the queue per second, as the keeper measures it."""
        return self._rate

    def eta(self, position: int, session: Session | None = None) -> float | None:
        rate = self.drain_rate()
        return round(position / rate, 1) if rate > 0 else None

    def waiting_for(self, session: Session) -> str | None:
        return None  # a line knows nothing of workers (``broker.lines`` does)

    def position_of(self, session_id: str) -> int | None:
        """The position of a watched session; None when it is not waiting or not watched."""
        session = self._watched.get(session_id)
        return session.queue_position if session is not None else None

    # -- watching ----------------------------------------------------------------------------

    def watch(self, session: Session) -> None:
        """Keep ``session.queue_position`` (and its owner) current while a reader waits for it."""
        if session.id not in self._watched:
            self._watched[session.id] = session
            self._soon()

    def unwatch(self, session: Session) -> None:
        if session.readers <= 0 and self._watched.pop(session.id, None) is not None:
            self._soon()

    def _soon(self) -> None:
        self._dirty = True
        # While no task waits there is no position to learn: the set goes with the first
        # watermark that counts a waiting task.
        if self._flush is None and self.mark is not None and self.mark.waiting:
            self._flush = asyncio.get_running_loop().call_later(WATCH_FLUSH_S, self._send_watches)

    def _send_watches(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        keeper = self.mark.keeper if self.mark else None
        if keeper is None:
            return  # sent with the first watermark, once the keeper is known
        watch = Watch(self._broker.replica_id, tuple(self._watched))
        self._sent_to, self._sent_at, self._dirty = keeper, time.monotonic(), False
        if keeper == self._broker.replica_id:
            self._watch_locally(watch)
        else:
            self._broker.send_soon(self._publish(keeper, watch))

    async def _publish(self, keeper: str, watch: Watch) -> None:
        await self._broker.send(
            self._broker.topology.live_exchange.name, watch.encode(), routing_key=keeper,
            headers=line_headers(WATCH, self.line_name, self._broker.topology), what="watch",
        )

    def on_positions(self, answer: Positions) -> None:
        """The keeper's answer: set each watched session's position, and its owner."""
        self._rate = answer.rate
        for session_id, (position, owner) in answer.positions.items():
            session = self._watched.get(session_id) or self._hub.get(session_id)
            if session is None:
                continue
            if self.line_name is not None:
                if position is not None and session.line is None:
                    session.line = self.line_name  # watched on every line until one knew it
                if session.line is not None and session.line != self.line_name:
                    continue  # another line's keeper: its "not waiting" says nothing of this one
            if owner is not None and session.owner is None:
                session.owner = owner
                session.notify()
            if session_id not in self._watched:
                continue
            if session.started or session.ended:
                position = None
            elif position is None and session.queue_position is not None:
                # It left the queue (a worker took it, so it was at the head) and its first
                # frame has not arrived yet: several free workers take several tasks at once.
                position = 1
            session.queue_position = position
            session.notify()  # also "still not waiting": a look at its position ends now

