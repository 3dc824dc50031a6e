"""Tail the events stream into the session hub.

On start the tail reads back ``session_ttl`` seconds of history (a new replica can serve
sessions that began before it started), then follows new events. After a broker reconnect
the consumer starts over from that point; stream offsets already applied are skipped.
"""

from __future__ import annotations

import datetime as dt

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from mqcommon.schemas import EventBatch
from mqcommon.topology import QueueSpec, declare_queue
from pydantic import ValidationError

from llm_stream_api import metrics
from llm_stream_api.hub import SessionHub

log = structlog.get_logger(__name__)

PREFETCH = 2000
ACK_EVERY = 200


class StreamTail:
    def __init__(self, hub: SessionHub, stream: QueueSpec, history_s: float) -> None:
        self._hub = hub
        self._stream = stream
        self._history_s = history_s
        self._last_offset = -1
        self._unacked = 0

    async def start(self, channel: AbstractChannel) -> None:
        await channel.set_qos(prefetch_count=PREFETCH)
        # Declared (not merely looked up) so the robust channel re-consumes after a reconnect.
        queue = await declare_queue(channel, self._stream)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._history_s)
        await queue.consume(self._on_message, arguments={"x-stream-offset": since})

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        fresh = not isinstance(offset, int) or offset > self._last_offset
        if fresh:
            if isinstance(offset, int):
                self._last_offset = offset
            try:
                batch = EventBatch.decode(message.body)
            except ValidationError as exc:
                log.error("skipping malformed event batch", error=str(exc)[:300], offset=offset)
            else:
                for event in batch.events:
                    self._hub.apply(event)
                metrics.EVENTS_RECEIVED.inc(len(batch.events))
        # Stream consumers must acknowledge to receive more; one ack covers many deliveries.
        self._unacked += 1
        if self._unacked >= ACK_EVERY:
            self._unacked = 0
            await message.ack(multiple=True)

    @property
    def last_offset(self) -> int:
        return self._last_offset
