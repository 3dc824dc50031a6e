"""Sessions whose task the broker dead-lettered: their readers get an error end at once.

A worker that gives up on a task (a bad payload, retryable failures exhausted) ends its
session itself before it rejects the task. A task whose every delivery died with its worker
(a crash, a broker restart during the generation) is dead-lettered by the broker itself, at
its delivery limit, and no worker is there to end it. The dead-letter exchange routes a copy
of every dead-lettered task to the notices queue beside the dead-letter queue (which keeps its
copy for operators); a worker takes each notice of a task the broker gave up on and ends the
session with an error, live to the replicas that hold it and in the history.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aio_pika.abc import AbstractIncomingMessage
from mqcommon.errors import BrokerUnavailable
from mqcommon.schemas import ChatTask, HistoryRecord
from pydantic import ValidationError

from llm_stream_worker import metrics
from llm_stream_worker.outbox import Outbox

log = structlog.get_logger(__name__)

# The broker's reason when a quorum queue's x-delivery-limit was reached.
DELIVERY_LIMIT = "delivery_limit"
GAVE_UP = "the task failed on every delivery (TASK_MAX_DELIVERIES) and was dead-lettered"


def death_reason(message: AbstractIncomingMessage) -> str | None:
    headers = message.headers or {}
    reason = headers.get("x-first-death-reason")
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    return reason if isinstance(reason, str) else None


async def on_notice(
    message: AbstractIncomingMessage, outbox: Outbox, record: Callable[[HistoryRecord], Awaitable[None]]
) -> None:
    """End the session of a task the broker dead-lettered at its delivery limit."""
    if death_reason(message) != DELIVERY_LIMIT:
        await message.ack()  # rejected by a worker, which ended the session itself
        return
    try:
        task = ChatTask.decode(message.body)
    except ValidationError:
        await message.ack()  # no session to end
        return
    out = outbox.open(task.session_id, attempt=1, trace_id=None, reply_to=task.reply_to, owner=task.owner)
    outbox.close(out, "error", GAVE_UP)
    transcript = HistoryRecord(
        "transcript", task.session_id, at=time.time(), text="", end=out.end, owner=task.owner
    )
    try:
        await record(transcript)
    except BrokerUnavailable as exc:
        log.warning("dead-letter notice not recorded; it comes back", error=str(exc))
        await message.nack(requeue=True)
        return
    metrics.TASKS.labels("dead_lettered").inc()
    log.warning("session ended: its task was dead-lettered at the delivery limit", session_id=task.session_id)
    await message.ack()
