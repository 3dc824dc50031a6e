"""The cancels every worker must know: a session cancelled while its task waits in the queue.

An API replica appends a ``cancel`` record to the cancels stream. Every worker follows that
stream, and at start-up first reads what the last ``cancel_keep`` seconds hold, up to a probe
of its own, before it takes any task: so a task whose session was cancelled is dropped without
calling the LLM, whichever worker takes it and whenever it started.

After a reconnect the feed goes on from the record after the last one it read, on a channel of
its own: not restored by aio-pika with its first arguments, which would read the whole window
again, and would fail the reconnection on a node where the stream has no running replica yet
(one just started again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import HistoryRecord, MalformedMessage, new_id
from mqcommon.topology import QueueSpec, declare_queue

from llm_stream_worker import metrics
from llm_stream_worker.heartbeat import BROKER_ERRORS

log = structlog.get_logger(__name__)

PREFETCH = 500
CATCH_UP_TIMEOUT_S = 10.0
RESUME_RETRY_S = 1.0


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(*BROKER_ERRORS):
        await channel.close()


class CancelFeed:
    def __init__(self, stream: QueueSpec, *, window_s: float, on_cancel: Callable[[str], None]) -> None:
        self._stream = stream
        self._window = window_s
        self._on_cancel = on_cancel
        self._probe = new_id()
        self._caught_up = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self.next_offset: int | None = None
        """The offset after the last record read (None before any)."""
        self._resuming: asyncio.Task[None] | None = None

    async def start(
        self, connection: AbstractRobustConnection, publish: AbstractChannel, *, confirm_timeout_s: float,
        stream: QueueSpec | None = None,
    ) -> None:
        """Follow the stream (as the topology in effect declares it, when given); return once
        what it held at start-up has been read. Follows it again after every reconnect."""
        self._stream = stream or self._stream
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._window)
        probe = HistoryRecord("probe", "worker", at=time.time(), probe=self._probe)
        await publish_confirmed(
            publish, self._stream.name, probe.encode(), timeout_s=confirm_timeout_s, headers=probe.headers()
        )
        await self._follow(connection, since)
        connection.close_callbacks.add(self._lost)
        connection.reconnect_callbacks.add(self._reconnected)
        try:
            async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
                await self._caught_up.wait()
        except TimeoutError:
            log.warning("cancels not read back in time; taking tasks anyway", timeout_s=CATCH_UP_TIMEOUT_S)

    async def _follow(self, connection: AbstractRobustConnection, since: object) -> None:
        # Never restored with the connection: closed when it is lost, followed anew after.
        channel = await connection.channel()
        try:
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await declare_queue(channel, self._stream)
            await queue.consume(self._on_message, arguments={"x-stream-offset": since})  # type: ignore[dict-item]
        except BaseException:
            await _close_quietly(channel)
            raise
        self._channel = channel

    def _lost(self, *_: object) -> None:
        if self._resuming is not None:
            self._resuming.cancel()
        channel, self._channel = self._channel, None
        if channel is not None:
            asyncio.get_running_loop().create_task(_close_quietly(channel))

    def _reconnected(self, connection: AbstractRobustConnection, *_: object) -> None:
        self._resuming = asyncio.get_running_loop().create_task(self._resume(connection))

    async def _resume(self, connection: AbstractRobustConnection) -> None:
        """Follow the stream again from the record after the last one read."""
        since: object = self.next_offset if self.next_offset is not None else "next"
        while self._channel is None:
            try:
                await self._follow(connection, since)
            except BROKER_ERRORS as exc:
                log.warning("cancels not followed yet; retrying", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(RESUME_RETRY_S)
        log.info("following the cancels again", from_offset=since)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        offset = (message.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self.next_offset = offset + 1
        try:
            record = HistoryRecord.decode(message.body)
        except MalformedMessage as exc:
            metrics.MALFORMED.inc()
            log.warning("ignoring a malformed cancel record", error=str(exc)[:200])
            return
        if record.kind == "cancel":
            self._on_cancel(record.session_id)
        elif record.kind == "probe" and record.probe == self._probe:
            self._caught_up.set()
