"""A followed session as the native dialect's streams send it: SSE frames or plain text, with
the metrics of every client stream (``StreamMeter``, shared by every dialect).

``docs/events.md`` lists every event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import orjson
import structlog

from llm_stream_api import metrics
from llm_stream_api.quota.admission import StreamCount
from llm_stream_api.service.follow import QUEUED, Discover, Piece, Positions, follow
from llm_stream_api.sessions.hub import DONE, TIMEOUT, Session, SessionHub
from llm_stream_api.settings import APISettings

log = structlog.get_logger(__name__)


def sse_frame(piece: Piece, *, typed: bool = False) -> bytes:
    """The SSE bytes of a piece: its text as ``chunk`` events. An answer's other parts
    (reasoning, tool calls, ...) are sent only to a client that asked for ``typed`` events,
    one event per part with its ``part`` key; others get the text alone, the ids being the
    same positions either way. Empty when a piece has nothing for this client."""
    if piece.kind is None:
        if piece.parts is None:
            return b"id: %d\ndata: {\"chunk\":%s}\n\n" % (piece.position, orjson.dumps(piece.text))
        return _typed_frames(piece) if typed else _content_frame(piece)
    if piece.kind == QUEUED:
        # News, not part of the answer: no id. A named event, so a client that treats any
        # message with a "type" as the end (or an EventSource listening to messages) is unmoved.
        news = {"type": QUEUED, "position": piece.queue_position, "eta_s": piece.eta_s}
        if piece.waiting_for is not None:
            news["waiting_for"] = piece.waiting_for
        return b"event: queued\ndata: %s\n\n" % orjson.dumps(news)
    if piece.kind == TIMEOUT:  # decided here, not stored: no id, so a resume asks again
        return b"data: %s\n\n" % orjson.dumps({"type": "error", "error": piece.error})
    if piece.kind == DONE:
        return b'id: %d\ndata: {"type": "done"}\n\n' % piece.position
    if piece.kind == "error":
        body = orjson.dumps({"type": "error", "error": piece.error})
        return b"id: %d\ndata: %s\n\n" % (piece.position, body)
    return b"id: %d\ndata: %s\n\n" % (piece.position, orjson.dumps({"type": piece.kind}))


def _content_frame(piece: Piece) -> bytes:
    content = piece.content
    if not content:
        return b""
    return b"id: %d\ndata: {\"chunk\":%s}\n\n" % (piece.position, orjson.dumps(content))


def _typed_frames(piece: Piece) -> bytes:
    position = piece.position - len(piece.text)
    out = []
    for key, text in piece.parts or ():
        position += len(text)
        out.append(b"id: %d\ndata: %s\n\n" % (position, orjson.dumps({"chunk": text, "part": key})))
    return b"".join(out)


class StreamMeter:
    """Metrics of one client stream."""

    def __init__(self, mode: str, requested_at: float | None, streams: StreamCount) -> None:
        self.mode = mode
        self._streams = streams
        self.requested_at = requested_at  # wall clock; None when resuming
        self.opened = time.monotonic()
        self.first_sent = False
        self.how = "disconnect"
        metrics.OPEN_STREAMS.labels(mode).inc()
        streams.opened()

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
        self._streams.closed()
        metrics.STREAM_DURATION.labels(self.mode).observe(time.monotonic() - self.opened)
        metrics.STREAM_ENDS.labels(self.mode, self.how).inc()


async def sse_body(
    hub: SessionHub, session_id: str, after: int, settings: APISettings, discover: Discover,
    queue: Positions | None = None, *, streams: StreamCount, typed: bool = False,
) -> AsyncIterator[bytes]:
    session = hub.get(session_id)
    requested_at = session.accepted_at if (after == 0 and session is not None) else None
    meter = StreamMeter("sse", requested_at, streams)
    try:
        async for piece in follow(hub, session_id, after, settings, discover, queue):
            if meter.requested_at is None and after == 0:
                meter.requested_at = hub.session(session_id).accepted_at
            frame = sse_frame(piece, typed=typed)
            if not frame:
                continue
            meter.sent(piece, len(frame))
            yield frame
    finally:
        meter.close(hub.get(session_id), session_id)


async def text_body(
    hub: SessionHub, session_id: str, settings: APISettings, requested_at: float, discover: Discover,
    on_disconnect: Callable[[str], None], *, streams: StreamCount,
) -> AsyncIterator[bytes]:
    """The answer as plain text; a failure ends the body with an ``[error]`` line.

    The request is the only reader of its answer: if its client goes away before the end,
    ``on_disconnect`` cancels the generation.
    """
    meter = StreamMeter("sync", requested_at, streams)
    try:
        async for piece in follow(hub, session_id, 0, settings, discover):
            if piece.kind is None:
                data = piece.content.encode()
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
