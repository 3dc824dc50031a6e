"""The cancels every worker must know: a session cancelled while its task waits in the queue.

An API replica appends a ``cancel`` record to the cancels stream. Every worker follows that
stream, and at start-up first reads what the last ``cancel_keep`` seconds hold, up to a probe
of its own, before it takes any task: so a task whose session was cancelled is dropped without
calling the LLM, whichever worker takes it and whenever it started.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import HistoryRecord, MalformedMessage, new_id
from mqcommon.topology import QueueSpec, declare_queue

from llm_stream_worker import metrics

log = structlog.get_logger(__name__)

PREFETCH = 500
CATCH_UP_TIMEOUT_S = 10.0


class CancelFeed:
    def __init__(self, stream: QueueSpec, *, window_s: float, on_cancel: Callable[[str], None]) -> None:
        self._stream = stream
        self._window = window_s
        self._on_cancel = on_cancel
        self._probe = new_id()
        self._caught_up = asyncio.Event()

    async def start(
        self, read: AbstractChannel, publish: AbstractChannel, *, confirm_timeout_s: float,
        stream: QueueSpec | None = None,
    ) -> None:
        """Follow the stream (as the topology in effect declares it, when given); return once
        what it held at start-up has been read."""
        self._stream = stream or self._stream
        await read.set_qos(prefetch_count=PREFETCH)
        queue = await declare_queue(read, self._stream)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._window)
        probe = HistoryRecord("probe", "worker", at=time.time(), probe=self._probe)
        await publish_confirmed(
            publish, self._stream.name, probe.encode(), timeout_s=confirm_timeout_s, headers=probe.headers()
        )
        await queue.consume(self._on_message, arguments={"x-stream-offset": since})
        try:
            async with asyncio.timeout(CATCH_UP_TIMEOUT_S):
                await self._caught_up.wait()
        except TimeoutError:
            log.warning("cancels not read back in time; taking tasks anyway", timeout_s=CATCH_UP_TIMEOUT_S)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
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
