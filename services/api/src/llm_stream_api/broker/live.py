"""The live feed of one API replica: frames for the sessions it holds, and nothing else.

The replica has one exclusive queue, bound to the live exchange with its replica id as the
routing key. Workers send there the frames of the sessions this replica accepted or asked for;
the keeper of the queue log sends the positions of the sessions it watches (and, to the
keeper, the other replicas send their watches).
A message that cannot be read (not JSON, an unknown version, a foreign producer) is counted,
logged once per kind, and dropped; it never stops the feed.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from mqcommon.schemas import (
    LINE_HEADER,
    MESSAGE_KIND_HEADER,
    POSITIONS,
    WATCH,
    MalformedMessage,
    Positions,
    Watch,
    decode_frames,
)
from mqcommon.topology import ExchangeSpec, declare_exchange

from llm_stream_api import metrics
from llm_stream_api.sessions.hub import SessionHub

log = structlog.get_logger(__name__)


class LiveFeed:
    """``on_watch`` and ``on_positions`` take the queue keeper's messages that share the queue
    (``broker.queue_keeper``, ``broker.queue_positions``): a header says which is which."""

    def __init__(
        self, hub: SessionHub, exchange: ExchangeSpec, replica_id: str, *,
        on_watch: Callable[[Watch, str | None], None] = lambda *_: None,
        on_positions: Callable[[Positions, str | None], None] = lambda *_: None,
    ) -> None:
        self._hub = hub
        self._exchange = exchange
        self.replica_id = replica_id
        self.on_watch = on_watch
        self.on_positions = on_positions
        self._logged: set[str] = set()

    @property
    def queue_name(self) -> str:
        return f"{self._exchange.name}.{self.replica_id}"

    async def start(self, channel: AbstractChannel) -> None:
        exchange = await declare_exchange(channel, self._exchange)
        # Exclusive: it lives and dies with this replica's connection (a robust channel
        # declares and binds it again after a reconnect).
        queue = await channel.declare_queue(
            self.queue_name, durable=False, exclusive=True, auto_delete=True,
            arguments={"x-queue-type": "classic"},
        )
        await queue.bind(exchange, routing_key=self.replica_id)
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        metrics.count_delivery("live", len(message.body))
        headers = message.headers or {}
        kind = headers.get(MESSAGE_KIND_HEADER)
        if kind is None:
            self.receive(message.body)
            return
        line = headers.get(LINE_HEADER)
        line = line if isinstance(line, str) else None  # None: the default line
        try:
            if kind == WATCH:
                self.on_watch(Watch.decode(message.body), line)
            elif kind == POSITIONS:
                self.on_positions(Positions.decode(message.body), line)
            else:
                raise MalformedMessage("malformed", f"a live message of unknown kind {kind!r}")
        except MalformedMessage as exc:
            metrics.MALFORMED.labels("live", exc.reason).inc()
            self._log_once(exc.reason, str(exc))

    def receive(self, body: bytes) -> None:
        try:
            frames, skipped = decode_frames(body)
        except MalformedMessage as exc:
            metrics.MALFORMED.labels("live", exc.reason).inc()
            self._log_once(exc.reason, str(exc))
            return
        if skipped:
            metrics.MALFORMED.labels("live", "frame").inc(skipped)
            self._log_once("frame", f"{skipped} malformed frame(s) skipped")
        applied = 0
        for frame in frames:
            if self._hub.apply(frame):
                applied += 1
            else:
                metrics.UNKNOWN_SESSION_FRAMES.inc()
                self._log_once("unknown", "frames for sessions this replica does not hold (dropped)")
        metrics.EVENTS_RECEIVED.inc(applied)

    def _log_once(self, kind: str, detail: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("dropping live data this replica cannot use", kind=kind, detail=detail[:300])
