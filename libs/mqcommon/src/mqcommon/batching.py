"""Coalescing publisher of answer events (used by workers, and by the API for announcements).

Callers hand events to ``emit``; they leave as one ``EventBatch`` message per flush on the
events stream. An urgent event (a session's first chunk, a final event, an announcement)
flushes on the next turn of the event loop, together with whatever else arrived in the same
turn; other events wait at most ``flush_interval`` or until the batch reaches
``flush_max_bytes``. Batches are pipelined on one confirming channel, so order is kept and a
slow confirm never blocks intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from mqcommon.errors import BrokerUnavailable
from mqcommon.schemas import EventBatch, StreamEvent

log = structlog.get_logger(__name__)

PublishFn = Callable[[bytes], Awaitable[None]]


def _ignore(_: int) -> None:
    return None


class EventBatcher:
    def __init__(
        self,
        publish: PublishFn,
        *,
        producer: str,
        flush_interval_s: float,
        flush_max_bytes: int,
        on_published: Callable[[int], None] = _ignore,
        on_failed: Callable[[int], None] = _ignore,
    ) -> None:
        self._publish = publish
        self._producer = producer
        self._interval = flush_interval_s
        self._max_bytes = flush_max_bytes
        self._on_published = on_published
        self._on_failed = on_failed
        self._pending: list[StreamEvent] = []
        self._pending_bytes = 0
        self._batch_done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._urgent = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.failures = 0
        """Batches not confirmed so far (a caller compares it before and after its work)."""

    def emit(self, event: StreamEvent, *, urgent: bool = False) -> asyncio.Future[None]:
        """Queue ``event``; the returned future resolves when its batch is confirmed."""
        loop = asyncio.get_running_loop()
        if self._batch_done is None:
            self._batch_done = loop.create_future()
        done = self._batch_done
        self._pending.append(event)
        self._pending_bytes += len(event.text) + 64
        if self._pending_bytes >= self._max_bytes:
            self.flush()
        elif urgent and not self._urgent:
            if self._timer is not None:
                self._timer.cancel()
            self._urgent = True
            self._timer = loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = loop.call_later(self._interval, self.flush)
        return done

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._urgent = False
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
            self._on_failed(count)
            log.warning("event batch not confirmed", error=str(exc), events=count)
            if done is not None and not done.done():
                done.set_exception(exc)
                done.exception()  # retrieved: callers that did not wait must not warn
            return
        self._on_published(count)
        if done is not None and not done.done():
            done.set_result(None)

    async def drain(self) -> None:
        """Publish what is pending and wait for every batch in flight."""
        self.flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
