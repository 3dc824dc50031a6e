"""The history stream, as this replica uses it: acceptance markers out, lookups by session id.

A replica reads history only on demand, for a session a client asks it about and that it does
not hold (a reader on another replica than the one that accepted the POST, a resume after a
replica died, a reader long after the end). A lookup appends a probe record for the session,
then reads the stream from ``window`` seconds ago up to that probe: everything recorded for
the session before the lookup began comes back, and the probe says where to stop. Session
ids the API makes are time-ordered (UUIDv7), so for those the read starts when the session
began rather than ``window`` ago.

On RabbitMQ 3.13 and later the read is filtered by the broker (``x-stream-filter``), so a
lookup costs about the records of that one session. Older brokers have no stream filtering:
there a lookup reads every record of the window (acceptances and transcripts, never tokens)
and drops the others itself, which the start-up log says once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPException
from aiormq.abc import FieldTable
from aiormq.exceptions import AMQPError
from mqcommon.errors import BrokerUnavailable
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import SESSION_HEADER, HistoryRecord, MalformedMessage, id_time, new_id
from mqcommon.topology import QueueSpec, declare_queue

from llm_stream_api import metrics

log = structlog.get_logger(__name__)

LOOKUP_PREFETCH = 1000
ACK_EVERY = 250
ID_CLOCK_MARGIN_S = 5.0  # the clocks of the replica that made the id and of the broker may differ


class History:
    def __init__(self, stream: QueueSpec, *, window_s: float, timeout_s: float, concurrency: int) -> None:
        self._stream = stream
        self._window = window_s
        self._timeout = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._publish: AbstractChannel | None = None
        self._markers: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self.filtering = False

    async def start(
        self, publish: AbstractChannel, markers: AbstractChannel, read: AbstractChannel, *, filtering: bool,
        stream: QueueSpec | None = None,
    ) -> None:
        """``publish`` confirms (probes); ``markers`` does not; ``read`` carries lookups;
        ``stream``: the stream as the topology in effect declares it (``Topology.declare``)."""
        self._stream = stream or self._stream
        self._publish = publish
        self._markers = markers
        self.filtering = filtering
        await read.set_qos(prefetch_count=LOOKUP_PREFETCH)
        self._queue = await declare_queue(read, self._stream)
        if not filtering:
            log.warning(
                "this RabbitMQ has no stream filtering (3.13+): a history lookup reads every "
                "record of the window", window_s=self._window,
            )

    async def accepted(
        self, session_id: str, at: float, trace_id: str | None, owner: str | None = None,
        line: str | None = None,
    ) -> None:
        """Record that the session was queued, and by which key (``owner``). Not confirmed: the
        task itself is durable, and a lost marker only means a reader on another replica learns
        of the session (and its owner) when a worker starts it."""
        record = HistoryRecord("accepted", session_id, at=at, trace_id=trace_id, owner=owner, line=line)
        try:
            if self._markers is None:
                raise BrokerUnavailable("not connected to the broker")
            await self._markers.default_exchange.publish(
                aio_pika.Message(record.encode(), headers=dict(record.headers()),
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self._stream.name, mandatory=False,
            )
        except (BrokerUnavailable, AMQPException, AMQPError, ConnectionError, RuntimeError) as exc:
            metrics.HISTORY_FAILURES.labels("marker").inc()
            log.warning("acceptance marker not recorded", session_id=session_id, error=str(exc))

    async def append(self, record: HistoryRecord) -> None:
        """Append ``record``, confirmed; raises ``BrokerUnavailable``."""
        if self._publish is None:
            raise BrokerUnavailable("not connected to the broker")
        await publish_confirmed(
            self._publish, self._stream.name, record.encode(), timeout_s=self._timeout,
            persistent=True, headers=record.headers(),
        )

    async def lookup(self, session_id: str, window_s: float | None = None) -> list[HistoryRecord]:
        """Every record of ``session_id`` in the window (``window_s``, else the replica's);
        raises ``BrokerUnavailable``."""
        async with self._slots:
            started = time.perf_counter()
            try:
                records = await self._lookup(session_id, self._window if window_s is None else window_s)
            except BrokerUnavailable:
                metrics.HISTORY_FAILURES.labels("lookup").inc()
                raise
            metrics.HISTORY_LOOKUPS.observe(time.perf_counter() - started)
            return records

    async def _lookup(self, session_id: str, window_s: float) -> list[HistoryRecord]:
        if self._queue is None:
            raise BrokerUnavailable("not connected to the broker")
        probe = new_id()
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window_s)
        if (made := id_time(session_id)) is not None:
            # An id this service made says when the session began: read from there only.
            since = max(since, dt.datetime.fromtimestamp(made - ID_CLOCK_MARGIN_S, dt.UTC))
        await self.append(HistoryRecord("probe", session_id, at=time.time(), probe=probe))
        found: list[HistoryRecord] = []
        reached = asyncio.Event()
        unacked = 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            metrics.count_delivery("history", len(message.body))
            # A stream consumer gets more only once it acknowledges; one ack covers many.
            nonlocal unacked
            unacked += 1
            if unacked >= ACK_EVERY:
                unacked = 0
                await message.ack(multiple=True)
            if reached.is_set() or (message.headers or {}).get(SESSION_HEADER) != session_id:
                return  # another session's record (a Bloom false positive, or no filtering)
            try:
                record = HistoryRecord.decode(message.body)
            except MalformedMessage as exc:
                metrics.MALFORMED.labels("history", exc.reason).inc()
                return
            if record.kind == "probe":
                if record.probe == probe:
                    reached.set()
            elif record.session_id == session_id:
                found.append(record)

        arguments: FieldTable = {"x-stream-offset": since}
        if self.filtering:
            arguments["x-stream-filter"] = session_id
            arguments["x-stream-match-unfiltered"] = False
        try:
            tag = await self._queue.consume(on_message, arguments=arguments)
        except (AMQPException, AMQPError, ConnectionError, RuntimeError) as exc:
            raise BrokerUnavailable(f"cannot read the history: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                await reached.wait()
        except TimeoutError as exc:
            raise BrokerUnavailable(f"history lookup did not finish within {self._timeout:g}s") from exc
        finally:
            try:
                await self._queue.cancel(tag)
            except (AMQPException, AMQPError, ConnectionError, RuntimeError):
                pass  # the channel is gone; so is the consumer
        return found
