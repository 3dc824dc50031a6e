"""One task, start to finish: stream from the LLM, publish events, then settle the delivery.

The task is acknowledged only after its final event is confirmed by the broker, so a crash at
any point means redelivery, never loss. What happens on each kind of failure is decided here:

    completed      final event confirmed                      -> ack
    retried        retryable failure, deliveries left, SIGTERM -> nack(requeue)
    failed         poison upstream error, timeout              -> error event, ack
    cancelled      session abandoned by every client           -> error event, ack
    dead_lettered  bad payload, or retryable failures exhausted -> (error event,) reject to DLQ
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import openai
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.batching import EventBatcher
from mqcommon.errors import BrokerUnavailable, UpstreamError
from mqcommon.llm import stream_answer
from mqcommon.schemas import ChatTask, StreamEvent
from mqcommon.tracing import TRACEPARENT_HEADER, trace_id_of
from pydantic import ValidationError

from llm_stream_worker import metrics
from llm_stream_worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

ABANDONED = "abandoned"
SHUTDOWN = "shutdown"


@dataclass(slots=True)
class Running:
    """A generation in progress, as the watchdog and shutdown see it."""

    session_id: str
    started_at: float
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None


async def process(
    message: AbstractIncomingMessage,
    running: Running,
    *,
    settings: WorkerSettings,
    llm: openai.AsyncOpenAI,
    publisher: EventBatcher,
) -> None:
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

    def final(kind: str, error: str | None = None, offset: int = 0) -> asyncio.Future[None]:
        event = StreamEvent(
            session_id=task.session_id, kind=kind, offset=offset, error=error, attempt=attempt,
            trace_id=trace_id,
        )
        return publisher.emit(event, urgent=True)

    failures_before = publisher.failures
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.llm_timeout_s):
            offset = await _generate(task, attempt, trace_id, settings, llm, publisher, started)
            await final("done", offset=offset)
        if publisher.failures != failures_before:
            raise BrokerUnavailable("an event batch of this generation was not confirmed")
        await _settle(message, "ack")
        metrics.GENERATION_DURATION.observe(time.perf_counter() - started)
        metrics.TASKS.labels("completed").inc()
        log.info("generation completed", chars=offset)
    except asyncio.CancelledError:
        if running.cancel_reason == ABANDONED:
            log.info("generation cancelled: no client is reading the session")
            await _finish_with_error(message, final("error", "session abandoned: no client"), "ack")
            metrics.TASKS.labels("cancelled").inc()
        else:
            log.info("generation interrupted by shutdown; requeueing")
            await _settle(message, "requeue")
            metrics.TASKS.labels("retried").inc()
        raise
    except TimeoutError:
        log.warning("generation timed out", timeout_s=settings.llm_timeout_s)
        error = f"generation timed out after {settings.llm_timeout_s:g}s"
        await _finish_with_error(message, final("error", error), "ack")
        metrics.TASKS.labels("failed").inc()
    except UpstreamError as exc:
        metrics.UPSTREAM_ERRORS.labels(exc.error_class, str(exc.retryable).lower()).inc()
        if exc.retryable and attempt < settings.task_max_deliveries:
            log.warning("upstream failed; requeueing", error=str(exc))
            await _settle(message, "requeue")
            metrics.TASKS.labels("retried").inc()
        elif exc.retryable:
            log.error("upstream failed on the last delivery; dead-lettering", error=str(exc))
            await _finish_with_error(message, final("error", f"LLM unavailable: {exc}"), "reject")
            metrics.TASKS.labels("dead_lettered").inc()
        else:
            log.warning("upstream refused the request", error=str(exc))
            await _finish_with_error(message, final("error", f"LLM error: {exc}"), "ack")
            metrics.TASKS.labels("failed").inc()
    except BrokerUnavailable as exc:
        log.warning("events not confirmed; requeueing", error=str(exc))
        await _settle(message, "requeue")
        metrics.TASKS.labels("retried").inc()
    finally:
        structlog.contextvars.unbind_contextvars("session_id", "task_id", "trace_id", "attempt")


async def _generate(
    task: ChatTask,
    attempt: int,
    trace_id: str | None,
    settings: WorkerSettings,
    llm: openai.AsyncOpenAI,
    publisher: EventBatcher,
    started: float,
) -> int:
    session_id = task.session_id
    publisher.emit(
        StreamEvent(session_id=session_id, kind="started", attempt=attempt, trace_id=trace_id)
    )
    offset = 0
    async for text in stream_answer(llm, settings, task.message, task.model):
        if offset == 0:
            metrics.UPSTREAM_TTFT.observe(time.perf_counter() - started)
        metrics.TOKENS.inc()
        publisher.emit(
            StreamEvent(session_id=session_id, kind="chunk", offset=offset, text=text, attempt=attempt),
            urgent=offset == 0,
        )
        offset += len(text)
    return offset


async def _finish_with_error(
    message: AbstractIncomingMessage, confirmed: asyncio.Future[None], settle: str
) -> None:
    """Settle only once the error event is confirmed, else requeue so the client still hears."""
    try:
        await confirmed
    except BrokerUnavailable:
        await _settle(message, "requeue")
        return
    await _settle(message, settle)


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
