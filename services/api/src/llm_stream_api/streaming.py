"""Turning a session in the hub into what a client reads: SSE frames or plain text.

A reader starts after the events it already has (``Last-Event-ID``), so resuming on any
process continues with no gap and no duplicate. A session nobody announces ends with an
error event after ``stream_wait_timeout``; a known one that stays silent, after
``stream_idle_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from llm_stream_api import metrics
from llm_stream_api.hub import CHUNK, DONE, TIMEOUT, HubEvent, Session, SessionHub, event_data, timeout_event
from llm_stream_api.settings import APISettings

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Numbered:
    id: int
    event: HubEvent


async def follow(
    hub: SessionHub, session_id: str, after: int, settings: APISettings
) -> AsyncIterator[list[Numbered]]:
    """Yield the session's events numbered from ``after + 1`` on, until it ends."""
    session = hub.session(session_id)
    session.readers += 1
    try:
        position = after
        progress_at = time.monotonic()
        while True:
            events = session.events
            if position < len(events):
                batch = [Numbered(i + 1, events[i]) for i in range(position, len(events))]
                position = len(events)
                progress_at = time.monotonic()
                yield batch
                continue
            if session.ended:
                return
            if session.known:
                limit, why = settings.stream_idle_timeout_s, (
                    f"no answer event for {settings.stream_idle_timeout_s:g}s"
                )
            else:
                limit, why = settings.stream_wait_timeout_s, (
                    f"session {session_id!r} not found: nothing was queued for it within "
                    f"{settings.stream_wait_timeout_s:g}s"
                )
            remaining = limit - (time.monotonic() - progress_at)
            if remaining <= 0:
                yield [Numbered(position + 1, timeout_event(why))]
                return
            if await session.wait(remaining):
                progress_at = time.monotonic()
    finally:
        session.readers -= 1


def sse_frame(item: Numbered) -> bytes:
    return b"id: %d\ndata: %s\n\n" % (item.id, event_data(item.event))


class StreamMeter:
    """Metrics of one client stream."""

    def __init__(self, mode: str, requested_at: float | None) -> None:
        self.mode = mode
        self.requested_at = requested_at  # wall clock; None when resuming
        self.opened = time.monotonic()
        self.first_sent = False
        self.how = "disconnect"
        metrics.OPEN_STREAMS.labels(mode).inc()

    def sent(self, items: list[Numbered], nbytes: int) -> None:
        if not self.first_sent and self.requested_at is not None:
            if any(item.event[0] == CHUNK for item in items):
                self.first_sent = True
                metrics.CLIENT_TTFT.labels(self.mode).observe(max(0.0, time.time() - self.requested_at))
        metrics.STREAM_EVENTS.labels(self.mode).inc(len(items))
        metrics.STREAM_BYTES.labels(self.mode).inc(nbytes)
        last = items[-1].event[0]
        if last != CHUNK:
            self.how = {DONE: "done", TIMEOUT: "timeout"}.get(last, "error")

    def close(self, session: Session) -> None:
        log.info(
            "stream closed", session_id=session.id, trace_id=session.trace_id, mode=self.mode,
            how=self.how, seconds=round(time.monotonic() - self.opened, 3),
        )
        metrics.OPEN_STREAMS.labels(self.mode).dec()
        metrics.STREAM_DURATION.labels(self.mode).observe(time.monotonic() - self.opened)
        metrics.STREAM_ENDS.labels(self.mode, self.how).inc()


async def sse_body(
    hub: SessionHub, session_id: str, after: int, settings: APISettings
) -> AsyncIterator[bytes]:
    session = hub.get(session_id)
    requested_at = session.accepted_at if (after == 0 and session is not None) else None
    meter = StreamMeter("sse", requested_at)
    try:
        async for items in follow(hub, session_id, after, settings):
            if meter.requested_at is None and after == 0:
                meter.requested_at = hub.session(session_id).accepted_at
            frames = b"".join(sse_frame(item) for item in items)
            meter.sent(items, len(frames))
            yield frames
    finally:
        meter.close(hub.session(session_id))


async def text_body(
    hub: SessionHub, session_id: str, settings: APISettings, requested_at: float
) -> AsyncIterator[bytes]:
    """The answer as plain text; a failure ends the body with an ``[error]`` line."""
    meter = StreamMeter("sync", requested_at)
    try:
        async for items in follow(hub, session_id, 0, settings):
            out = []
            for item in items:
                if item.event[0] == CHUNK:
                    out.append(item.event[1])
                elif item.event[0] != DONE:
                    out.append(f"\n[error] {item.event[1]}\n")
            data = "".join(out).encode()
            meter.sent(items, len(data))
            if data:
                yield data
    finally:
        meter.close(hub.session(session_id))
