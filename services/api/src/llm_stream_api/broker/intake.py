"""What the API publishes that must not be lost: tasks, their queue-log records, cancels.

A task goes to the intake exchange, which routes it into the task queue and into the queue log
in the same order (``broker.queue_positions``); only its confirm is awaited. With shards
(``TASK_SHARDS``) it goes to the line's shard exchange instead, with the key of its session's
shard, which routes it into that shard's queue and into the same queue log. A task the queue
refused (it is full) is withdrawn from the queue log, so that those behind it do not wait for
it. A cancel is a durable record on the cancels stream, read by every worker, also by one that
starts after it.
"""

from __future__ import annotations

import time

import aio_pika
import structlog
from mqcommon.errors import PublishRefused
from mqcommon.publishing import publish_confirmed
from mqcommon.schemas import QUEUED, WITHDRAWN, ChatTask, HistoryRecord, QueueEvent
from mqcommon.tracing import TRACEPARENT_HEADER

from llm_stream_api.broker.connection import SEND_ERRORS, BrokerConnection

log = structlog.get_logger(__name__)


class Intake:
    def __init__(self, broker: BrokerConnection) -> None:
        self._broker = broker
        self._timeout_s = broker.settings.enqueue_timeout_s

    async def publish_task(self, task: ChatTask, traceparent: str, line: str | None = None) -> None:
        """Queue ``task`` in ``line`` (a task queue's name; None: the default line).

        Raises ``PublishRefused`` when the queue is full, ``BrokerUnavailable`` when the broker
        is down or does not confirm in time."""
        channel = self._broker.publishing_channel()
        topology = self._broker.topology_of(line) if line else self._broker.topology
        entered = QueueEvent(QUEUED, task.session_id, at=task.created_at, owner=task.owner)
        shard = topology.shard_key(task.session_id) if topology.shard_exchange is not None else ""
        try:
            await publish_confirmed(
                channel, shard, task.encode(),
                exchange=self._broker.intakes.get(topology.task_queue.name)
                or (topology.shard_exchange or topology.intake_exchange).name,
                timeout_s=self._timeout_s, persistent=True,
                headers={TRACEPARENT_HEADER: traceparent, **entered.headers()},
                message_id=task.task_id,
            )
        except PublishRefused:
            # The queue log took it; the queue did not: those behind it must not wait for it.
            withdrawn = QueueEvent(WITHDRAWN, task.session_id, at=time.time())
            self._broker.send_soon(self._log(withdrawn, topology.queue_log_stream.name))
            raise

    async def publish_cancel(self, session_id: str) -> None:
        record = HistoryRecord("cancel", session_id, at=time.time())
        await publish_confirmed(
            self._broker.publishing_channel(), self._broker.topology.cancels_stream.name,
            record.encode(), timeout_s=self._timeout_s, headers=record.headers(),
        )

    async def _log(self, event: QueueEvent, queue_log: str) -> None:
        channel = self._broker.channel
        if channel is None:
            return
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(b"", headers=event.headers()),
                routing_key=queue_log, timeout=self._timeout_s,
            )
        except SEND_ERRORS as exc:
            log.warning("queue log record not sent", session_id=event.session_id, error=str(exc))
