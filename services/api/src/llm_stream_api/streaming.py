"""Turning a session in the hub into what a client reads: SSE frames or plain text.

An SSE id is a position in the answer: a chunk's id is the number of characters sent once it
is read, and the final event's id is that number plus one. Positions mean the same on every
replica, so ``Last-Event-ID: N`` continues at character N anywhere, with no gap and no
duplicate; events without an id (waiting, timeouts) are never replayed. A session nobody
knows ends with an error event after ``stream_wait_timeout``; a known one that stays silent,
after ``stream_idle_timeout``. ``docs/events.md`` lists every event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import structlog

from llm_stream_api import admission, metrics
from llm_stream_api.hub import DONE, TIMEOUT, Session, SessionHub
from llm_stream_api.queue_position import QueueTracker
from llm_stream_api.settings import APISettings

log = structlog.get_logger(__name__)

# How often a reader asks again for a session it cannot see: unknown ones (the POST may not
# have landed yet; 2 s, then twice as long each time, since each ask may read history), and
# silent ones (a replay or the end may have been missed).
REDISCOVER_UNKNOWN_S = 2.0
REDISCOVER_SILENT_S = 10.0
# A waiting session's position is sent at once, on every change, and again at this interval
# (the contract says at least every 2 s).
QUEUED_REPEAT_S = 1.0
QUEUED = "queued"  # not an end: a reader's news about a waiting session, never stored

Discover = Callable[[Session], None]


@dataclass(slots=True)
class Piece:
    """What a reader gets next: new text up to ``position``, or the end (``kind`` set)."""

    position: int
    text: str = ""
    kind: str | None = None
    error: str | None = None
    queue_position: int | None = None  # QUEUED pieces
    eta_s: float | None = None


async def follow(
    hub: SessionHub, session_id: str, after: int, settings: APISettings, discover: Discover,
    queue: QueueTracker | None = None,
) -> AsyncIterator[Piece]:
    """Yield the session's text from character ``after`` on, then how it ended.

    With ``queue``, a session waiting in the task queue also yields ``QUEUED`` pieces: its
    position at once, on every change, and every ``QUEUED_REPEAT_S``.
    """
    session = hub.session(session_id)
    session.readers += 1
    try:
        if not session.tracked:
            discover(session)
        position = after
        progress_at = asked_at = time.monotonic()
        unknown_wait = REDISCOVER_UNKNOWN_S
        told: tuple[int | None, float] = (None, 0.0)  # the position sent last, and when
        if queue is not None and not session.started:
            queue.watch(session)
        while True:
            text = session.text
            if told[0] is not None and told[0] > 1 and (session.started or session.ended):
                # Taken from the head of the queue before the reader heard it reach 1 (several
                # free workers take several tasks at once; a first frame can outrun the log).
                told = (1, time.monotonic())
                yield Piece(position, kind=QUEUED, queue_position=1, eta_s=0.0)
            if position < len(text):
                yield Piece(len(text), text[position:])
                position = len(text)
                progress_at = time.monotonic()
                continue
            if session.ended:
                if position <= len(text):
                    yield Piece(len(text) + 1, kind=session.end_kind, error=session.error)
                return
            now = time.monotonic()
            if queue is not None and not session.started and session.queue_position is not None:
                if session.queue_position != told[0] or now - told[1] >= QUEUED_REPEAT_S:
                    if session.queue_position != told[0]:
                        progress_at = now  # moving up the queue is progress
                    told = (session.queue_position, now)
                    yield Piece(
                        position, kind=QUEUED, queue_position=told[0], eta_s=queue.eta(told[0])
                    )
                    continue
            if session.known:
                limit, why = settings.stream_idle_timeout_s, (
                    f"no answer event for {settings.stream_idle_timeout_s:g}s"
                )
                again = REDISCOVER_SILENT_S
            else:
                limit, why = settings.stream_wait_timeout_s, (
                    f"session {session_id!r} not found: nothing was queued for it within "
                    f"{settings.stream_wait_timeout_s:g}s"
                )
                again = unknown_wait
            remaining = limit - (now - progress_at)
            if remaining <= 0:
                yield Piece(position, kind=TIMEOUT, error=why)
                return
            if now - asked_at >= again:
                asked_at = now
                if not session.known:
                    unknown_wait *= 2
                discover(session)
            before = (session.started, session.known)
            waiting = queue is not None and session.queue_position is not None and not session.started
            # Until the next repeat is due, not a whole interval: a wait that wakes a moment early
            # would otherwise skip a repeat and leave two intervals between them.
            until_repeat = max(told[1] + QUEUED_REPEAT_S - now, 0.01)
            await session.wait(min(remaining, again, until_repeat) if waiting else min(remaining, again))
            if (session.started, session.known) != before:
                progress_at = time.monotonic()
    finally:
        session.readers -= 1
        if queue is not None:
            queue.unwatch(session)


def sse_frame(piece: Piece) -> bytes:
    if piece.kind is None:
        return b"id: %d\ndata: {\"chunk\":%s}\n\n" % (piece.position, orjson.dumps(piece.text))
    if piece.kind == QUEUED:
        # News, not part of the answer: no id. A named event, so a client that treats any
        # message with a "type" as the end (or an EventSource listening to messages) is unmoved.
        body = {"type": QUEUED, "position": piece.queue_position, "eta_s": piece.eta_s}
        return b"event: queued\ndata: %s\n\n" % orjson.dumps(body)
    if piece.kind == TIMEOUT:  # decided here, not stored: no id, so a resume asks again
        return b"data: %s\n\n" % orjson.dumps({"type": "error", "error": piece.error})
    if piece.kind == DONE:
        return b'id: %d\ndata: {"type": "done"}\n\n' % piece.position
    if piece.kind == "error":
        body = orjson.dumps({"type": "error", "error": piece.error})
        return b"id: %d\ndata: %s\n\n" % (piece.position, body)
    return b"id: %d\ndata: %s\n\n" % (piece.position, orjson.dumps({"type": piece.kind}))


class StreamMeter:
    """Metrics of one client stream."""

    def __init__(self, mode: str, requested_at: float | None) -> None:
        self.mode = mode
        self.requested_at = requested_at  # wall clock; None when resuming
        self.opened = time.monotonic()
        self.first_sent = False
        self.how = "disconnect"
        metrics.OPEN_STREAMS.labels(mode).inc()
        admission.STREAMS.opened()

    def sent(self, piece: Piece, nbytes: int) -> None:
        if piece.kind is None and not self.first_sent and self.requested_at is not None:
            self.first_sent = True
            metrics.CLIENT_TTFT.labels(self.mode).observe(max(0.0, time.time() - self.requested_at))
        metrics.STREAM_EVENTS.labels(self.mode).inc()
        metrics.STREAM_BYTES.labels(self.mode).inc(nbytes)
        if piece.kind is not None and piece.kind != QUEUED:
            self.how = {DONE: "done", TIMEOUT: "timeout", "cancelled": "cancelled"}.get(piece.kind, "error")

    def close(self, session: Session | None, session_id: str) -> None:
        log.info(
            "stream closed", session_id=session_id, trace_id=session.trace_id if session else None,
            mode=self.mode, how=self.how, seconds=round(time.monotonic() - self.opened, 3),
        )
        metrics.OPEN_STREAMS.labels(self.mode).dec()
        admission.STREAMS.closed()
        metrics.STREAM_DURATION.labels(self.mode).observe(time.monotonic() - self.opened)
        metrics.STREAM_ENDS.labels(self.mode, self.how).inc()


async def sse_body(
    hub: SessionHub, session_id: str, after: int, settings: APISettings, discover: Discover,
    queue: QueueTracker | None = None,
) -> AsyncIterator[bytes]:
    session = hub.get(session_id)
    requested_at = session.accepted_at if (after == 0 and session is not None) else None
    meter = StreamMeter("sse", requested_at)
    try:
        async for piece in follow(hub, session_id, after, settings, discover, queue):
            if meter.requested_at is None and after == 0:
                meter.requested_at = hub.session(session_id).accepted_at
            frame = sse_frame(piece)
            meter.sent(piece, len(frame))
            yield frame
    finally:
        meter.close(hub.get(session_id), session_id)


async def text_body(
    hub: SessionHub, session_id: str, settings: APISettings, requested_at: float, discover: Discover,
    on_disconnect: Callable[[str], None],
) -> AsyncIterator[bytes]:
    """The answer as plain text; a failure ends the body with an ``[error]`` line.

    The request is the only reader of its answer: if its client goes away before the end,
    ``on_disconnect`` cancels the generation.
    """
    meter = StreamMeter("sync", requested_at)
    try:
        async for piece in follow(hub, session_id, 0, settings, discover):
            if piece.kind is None:
                data = piece.text.encode()
            elif piece.kind == DONE:
                data = b""
            elif piece.kind == "cancelled":
                data = b"\n[cancelled]\n"
            else:
                data = f"\n[error] {piece.error}\n".encode()
            meter.sent(piece, len(data))
            if data:
                yield data
    finally:
        if meter.how == "disconnect":
            on_disconnect(session_id)
        meter.close(hub.get(session_id), session_id)
