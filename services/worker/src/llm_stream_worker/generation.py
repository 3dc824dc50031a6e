"""One task, start to finish: stream from the LLM, send live frames, then settle the delivery.

The task is acknowledged only after its transcript (the whole answer and how it ended) is
confirmed on the history stream, so a crash at any point means redelivery, never loss. What
happens on each kind of failure is decided here:

    completed      transcript confirmed                        -> ack
    retried        retryable failure, deliveries left, SIGTERM -> nack(requeue)
    failed         poison upstream error, timeout              -> error end, ack
    cancelled      cancelled by a client (even while queued: the   -> cancelled end, ack
                   LLM is never called), or abandoned by all       -> error end, ack
    dead_lettered  bad payload, or retryable failures exhausted -> (error end,) reject to DLQ
                   every delivery died with its worker          -> the broker dead-letters it;
                                                                   dead_letters ends the session
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import openai
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.errors import BrokerUnavailable, UpstreamError
from mqcommon.llm import Outcome, stream_task
from mqcommon.schemas import ChatTask, HistoryRecord
from mqcommon.tracing import TRACEPARENT_HEADER, trace_id_of
from pydantic import ValidationError

from llm_stream_worker import metrics
from llm_stream_worker.outbox import Outbox, Outgoing
from llm_stream_worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

ABANDONED = "abandoned"
CANCELLED = "cancelled"  # a client asked for it (DELETE /sessions/{id}, a dropped sync stream)
SHUTDOWN = "shutdown"
LOST = "lost"  # the channel of the delivery closed: the broker has requeued the task already

RecordFn = Callable[[HistoryRecord], Awaitable[None]]


@dataclass(slots=True)
class Running:
    """A generation in progress, as the watchdog and shutdown see it."""

    session_id: str
    started_at: float
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    feed: int = 0  # the task queue it came from (``Worker.feeds``: a lane's shard)


async def process(
    message: AbstractIncomingMessage,
    running: Running,
    *,
    settings: WorkerSettings,
    llm: openai.AsyncOpenAI,
    outbox: Outbox,
    record: RecordFn,
    is_cancelled: Callable[[str], bool] = lambda _: False,
) -> None:
    """Run one delivery; ``record`` publishes a history record and waits for its confirm."""
    try:
        task = ChatTask.decode(message.body)
    except ValidationError as exc:
        log.error("dead-lettering malformed task", error=str(exc)[:300])
        await _settle(message, "reject")
        metrics.TASKS.labels("dead_lettered").inc()
        return

    headers = message.headers or {}
    attempt = int(headers.get("x-delivery-count", 0) or 0) + 1
    traceparent = headers.get(TRACEPARENT_HEADER)
    trace_id = trace_id_of(str(traceparent) if traceparent else None)
    structlog.contextvars.bind_contextvars(
        session_id=task.session_id, task_id=task.task_id, trace_id=trace_id, attempt=attempt
    )
    if attempt == 1:
        metrics.QUEUE_WAIT.observe(max(0.0, time.time() - task.created_at))
    log.info("generation started")
    out = outbox.open(
        task.session_id, attempt=attempt, trace_id=trace_id, reply_to=task.reply_to, owner=task.owner
    )

    async def finish(
        kind: str, settle: str, error: str | None = None, outcome: Outcome | None = None,
        param: str | None = None,
    ) -> None:
        """End the session for every reader, and settle once its transcript is durable."""
        usage = outcome.usage if outcome is not None and task.include_usage else None
        outbox.close(out, kind, error, usage, outcome.finish if outcome is not None else None, param)
        try:
            await record(_transcript(out))
        except BrokerUnavailable as exc:
            log.warning("transcript not confirmed; requeueing", error=str(exc))
            metrics.PUBLISH_FAILURES.inc()
            await _settle(message, "requeue")
            return
        await _settle(message, settle)

    def retry(why: str) -> None:
        outbox.discard(out)
        metrics.TASKS.labels("retried").inc()
        log.info("requeueing", why=why)

    if is_cancelled(task.session_id):
        log.info("task dropped: cancelled before it started")
        await finish("cancelled", "ack")
        metrics.TASKS.labels("cancelled").inc()
        return

    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.llm_timeout_s):
            outcome = await _generate(task, out, settings, llm, outbox, started)
        UPSTREAM.answered()
        await finish("done", "ack", outcome=outcome)
        metrics.GENERATION_DURATION.observe(time.perf_counter() - started)
        metrics.TASKS.labels("completed").inc()
        log.info("generation completed", chars=out.length)
    except asyncio.CancelledError:
        if running.cancel_reason == CANCELLED:
            log.info("generation cancelled by a client")
            await finish("cancelled", "ack")
            metrics.TASKS.labels("cancelled").inc()
        elif running.cancel_reason == ABANDONED:
            log.info("generation cancelled: no client is reading the session")
            await finish("error", "ack", "session abandoned: no client")
            metrics.TASKS.labels("cancelled").inc()
        elif running.cancel_reason == LOST:
            # Another delivery of the same task may run already: stop this one's LLM call.
            retry("the broker connection was lost; the broker redelivers the task")
        else:
            retry("shutdown")
            await _settle(message, "requeue")
        raise
    except TimeoutError:
        log.warning("generation timed out", timeout_s=settings.llm_timeout_s)
        await finish("error", "ack", f"generation timed out after {settings.llm_timeout_s:g}s")
        metrics.TASKS.labels("failed").inc()
    except UpstreamError as exc:
        metrics.UPSTREAM_ERRORS.labels(exc.error_class, str(exc.retryable).lower()).inc()
        if exc.retryable:
            UPSTREAM.failed()  # a refusal of one request says nothing of the upstream's health
        if exc.retryable and attempt < settings.task_max_deliveries:
            log.warning("upstream failed", error=str(exc))
            retry("upstream failure")
            await _settle(message, "requeue")
        elif exc.retryable:
            log.error("upstream failed on the last delivery; dead-lettering", error=str(exc))
            await finish("error", "reject", f"LLM unavailable: {exc}")
            metrics.TASKS.labels("dead_lettered").inc()
        else:
            log.warning("upstream refused the request", error=str(exc))
            await finish("error", "ack", f"LLM error: {exc}", param=exc.param)
            metrics.TASKS.labels("failed").inc()
    finally:
        structlog.contextvars.unbind_contextvars("session_id", "task_id", "trace_id", "attempt")


class UpstreamHealth:
    """What the last generation of this process said of its upstream, for the heartbeats."""

    def __init__(self) -> None:
        self.state: Literal["ok", "failing", "unknown"] = "unknown"
        self.on_change: Callable[[], None] = lambda: None  # the heartbeat tells it at once

    def answered(self) -> None:
        self._set("ok")

    def failed(self) -> None:
        self._set("failing")

    def _set(self, state: Literal["ok", "failing"]) -> None:
        if state != self.state:
            self.state = state
            self.on_change()


UPSTREAM = UpstreamHealth()


def _transcript(out: Outgoing) -> HistoryRecord:
    return HistoryRecord("transcript", out.session_id, at=time.time(), text=out.text, end=out.end,
                         trace_id=out.trace_id, owner=out.owner, kinds=out.runs())


async def _generate(
    task: ChatTask,
    out: Outgoing,
    settings: WorkerSettings,
    llm: openai.AsyncOpenAI,
    outbox: Outbox,
    started: float,
) -> Outcome:
    """Stream the answer into the outbox; the LLM's usage and finish reason."""
    pieces = 0
    outcome = Outcome()
    try:
        async for parts in stream_task(llm, settings, task, outcome):
            if not pieces:
                metrics.UPSTREAM_TTFT.observe(time.perf_counter() - started)
            pieces += 1
            outbox.write_parts(out, parts)
    finally:
        metrics.TOKENS.inc(pieces)
    return outcome


async def _settle(message: AbstractIncomingMessage, how: str) -> None:
    try:
        if how == "ack":
            await message.ack()
        elif how == "requeue":
            await message.nack(requeue=True)
        else:
            await message.reject(requeue=False)
    except (AMQPException, AMQPError, ConnectionError, RuntimeError) as exc:
        # The channel is gone: the broker requeues every unacknowledged task by itself.
        log.warning("could not settle task; the broker will redeliver it", how=how, error=str(exc))
