"""Coalescing publisher of answer events.

Every generation in the process hands its events here; they leave as one batch message per
flush on the events stream. A session's first chunk and its final event flush at once (the
first token is never delayed); other chunks wait at most ``flush_interval`` or until the batch
reaches ``flush_max_bytes``. Batches are pipelined on one confirming channel, so order is kept
and a slow confirm never blocks token intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from mqcommon.errors import BrokerUnavailable
from mqcommon.schemas import EventBatch, StreamEvent

from llm_stream_worker import metrics

log = structlog.get_logger(__name__)

PublishFn = Callable[[bytes], Awaitable[None]]


class EventPublisher:
    def __init__(
        self, publish: PublishFn, *, producer: str, flush_interval_s: float, flush_max_bytes: int
    ) -> None:
        self._publish = publish
        self._producer = producer
        self._interval = flush_interval_s
        self._max_bytes = flush_max_bytes
        self._pending: list[StreamEvent] = []
        self._pending_bytes = 0
        self._batch_done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.failures = 0
        """Batches not confirmed so far (a generation compares it before and after)."""

    def emit(self, event: StreamEvent, *, urgent: bool = False) -> asyncio.Future[None]:
        """Queue ``event``; the returned future resolves when its batch is confirmed."""
        loop = asyncio.get_running_loop()
        if self._batch_done is None:
            self._batch_done = loop.create_future()
        done = self._batch_done
        self._pending.append(event)
        self._pending_bytes += len(event.text) + 64
        if urgent or self._pending_bytes >= self._max_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._interval, self.flush)
        return done

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        events, done = self._pending, self._batch_done
        self._pending, self._pending_bytes, self._batch_done = [], 0, None
        body = EventBatch(producer=self._producer, events=events).encode()
        task = asyncio.create_task(self._send(body, len(events), done))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _send(self, body: bytes, count: int, done: asyncio.Future[None] | None) -> None:
        try:
            await self._publish(body)
        except BrokerUnavailable as exc:
            self.failures += 1
            metrics.PUBLISH_FAILURES.inc()
            log.warning("event batch not confirmed", error=str(exc), events=count)
            if done is not None and not done.done():
                done.set_exception(exc)
            return
        metrics.EVENT_BATCHES.inc()
        metrics.EVENTS_PUBLISHED.inc(count)
        if done is not None and not done.done():
            done.set_result(None)

    async def drain(self) -> None:
        """Publish what is pending and wait for every batch in flight."""
        self.flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
