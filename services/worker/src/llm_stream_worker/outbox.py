"""Live frames: what this worker's generations produced, sent to the replicas that serve them.

Each running session keeps its answer so far and the replicas it is routed to: the replica
that accepted the task (``reply_to``) and any replica that asked for it on the presence
exchange. A flush sends every replica one message with one frame per session: all the text
since the previous flush, as one piece. A session's first frame and its end flush at once, so
neither the first token nor the end waits; other text waits at most ``flush_interval``.

A replica that joins late (a reader arrived there, or it noticed a gap) gets a replay: the
whole answer so far from offset 0, then the same frames as everyone. Finished sessions stay
for ``keep_ended`` seconds, so a replica that missed the end still gets it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from mqcommon.parts import CONTENT, Kinds, Part, Run, runs_to_wire
from mqcommon.schemas import End, encode_frames

from llm_stream_worker import metrics

log = structlog.get_logger(__name__)

SendFn = Callable[[str, bytes], Awaitable[None]]


class Outgoing:
    """One session's answer on this worker."""

    __slots__ = (
        "attempt", "end", "ended_at", "kinds", "length", "owner", "parts", "routes", "sent",
        "session_id", "started", "trace_id",
    )

    def __init__(
        self, session_id: str, attempt: int, trace_id: str | None, owner: str | None = None
    ) -> None:
        self.session_id = session_id
        self.attempt = attempt
        self.trace_id = trace_id
        self.owner = owner  # the creator's key id: a replica that did not accept it learns it here
        self.parts: list[str] = []
        self.kinds: Kinds | None = None  # which part each character is (None: all content)
        self.length = 0  # characters produced
        self.sent = 0  # characters already in a flushed frame
        self.started = True  # the "started" mark is still to be sent
        self.end: End | None = None
        self.ended_at: float | None = None
        self.routes: dict[str, float] = {}  # replica -> last time it asked

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def runs(self, offset: int = 0) -> list[Run] | None:
        """The parts of the answer from ``offset`` on; None while it is plain text."""
        return None if self.kinds is None else self.kinds.window(offset)

    def frame(self, offset: int, *, replay: bool = False) -> dict[str, Any]:
        text = self.text[offset:]
        out: dict[str, Any] = {"sid": self.session_id, "off": offset, "text": text}
        if self.kinds is not None and (kinds := runs_to_wire(self.kinds.window(offset))) is not None:
            out["kinds"] = kinds
        if replay or self.started:
            out["started"] = True
        if self.end is not None:
            out["end"] = self.end.to_wire()
        if self.attempt != 1:
            out["attempt"] = self.attempt
        if self.trace_id and (replay or self.started):
            out["trace"] = self.trace_id
        if self.owner and (replay or self.started):
            out["owner"] = self.owner
        return out


class Outbox:
    def __init__(
        self,
        send: SendFn,
        *,
        producer: str,
        flush_interval_s: float,
        flush_max_bytes: int,
        route_ttl_s: float,
        keep_ended_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._producer = producer
        self._interval = flush_interval_s
        self._max_bytes = flush_max_bytes
        self._route_ttl = route_ttl_s
        self._keep_ended = keep_ended_s
        self._clock = clock
        self.sessions: dict[str, Outgoing] = {}
        self._dirty: dict[str, Outgoing] = {}
        self._dirty_bytes = 0
        self._replays: dict[str, list[dict[str, Any]]] = {}
        # Replicas that asked for a session this worker has not started (yet): queued tasks.
        self._pending: dict[str, dict[str, float]] = {}
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._urgent = False
        self._sending: asyncio.Task[None] | None = None
        self.messages_sent = 0
        self.frames_sent = 0

    # -- producing -------------------------------------------------------------------------

    def open(
        self, session_id: str, *, attempt: int, trace_id: str | None, reply_to: str | None,
        owner: str | None = None,
    ) -> Outgoing:
        """A generation starts: route it, and tell its replicas at once."""
        out = Outgoing(session_id, attempt, trace_id, owner)
        now = self._clock()
        if reply_to:
            out.routes[reply_to] = now
        out.routes.update(self._pending.pop(session_id, {}))
        self.sessions[session_id] = out
        metrics.ANSWERS_KEPT.set(len(self.sessions))
        self._mark(out, urgent=True)
        return out

    def write(self, out: Outgoing, text: str) -> None:
        out.parts.append(text)
        out.length += len(text)
        if out.kinds is not None:
            out.kinds.add(CONTENT, len(text))
        self._dirty_bytes += len(text)
        self._mark(out, urgent=out.sent == 0 and out.length == len(text))

    def write_parts(self, out: Outgoing, parts: list[Part]) -> None:
        """The parts of one chunk of the LLM's answer: they go out in one frame."""
        if len(parts) == 1 and parts[0][0] == CONTENT:
            self.write(out, parts[0][1])
            return
        first = out.sent == 0 and out.length == 0
        for key, text in parts:
            if key != CONTENT and out.kinds is None:
                out.kinds = Kinds()
                out.kinds.add(CONTENT, out.length)
            out.parts.append(text)
            out.length += len(text)
            if out.kinds is not None:
                out.kinds.add(key, len(text))
            self._dirty_bytes += len(text)
        self._mark(out, urgent=first)

    def close(
        self, out: Outgoing, kind: str, error: str | None = None, usage: dict[str, Any] | None = None,
        finish: str | None = None, param: str | None = None,
    ) -> None:
        """The generation ended (done, error or cancelled): flush its end at once."""
        out.end = End(kind, out.length, error, usage, finish, param)
        out.ended_at = self._clock()
        self._mark(out, urgent=True)

    def discard(self, out: Outgoing) -> None:
        """The task goes back to the queue: another attempt will produce the answer again."""
        if self.sessions.get(out.session_id) is out:
            routes = out.routes
            del self.sessions[out.session_id]
            metrics.ANSWERS_KEPT.set(len(self.sessions))
            # Whoever asked keeps its place for the next attempt, wherever it runs.
            self._pending.setdefault(out.session_id, {}).update(routes)
        self._dirty.pop(out.session_id, None)

    # -- replicas asking -------------------------------------------------------------------

    def interest(self, replica: str, session_id: str, *, replay: bool) -> None:
        """``replica`` holds ``session_id`` unfinished; with ``replay`` it needs it all again."""
        now = self._clock()
        out = self.sessions.get(session_id)
        if out is None:
            self._pending.setdefault(session_id, {})[replica] = now
            return
        known = replica in out.routes
        if out.end is None:
            out.routes[replica] = now
        if replay or not known or out.end is not None:
            # A replica still listing a finished session missed its end.
            self._replays.setdefault(replica, []).append(out.frame(0, replay=True))
            metrics.REPLAYS.inc()
            self._schedule(urgent=True)

    # -- flushing --------------------------------------------------------------------------

    def _mark(self, out: Outgoing, *, urgent: bool) -> None:
        self._dirty[out.session_id] = out
        if self._dirty_bytes >= self._max_bytes:
            self.flush()
        else:
            self._schedule(urgent)

    def _schedule(self, urgent: bool) -> None:
        loop = asyncio.get_running_loop()
        if urgent and not self._urgent:
            if self._timer is not None:
                self._timer.cancel()
            self._urgent = True
            self._timer = loop.call_soon(self.flush)
        elif self._timer is None:
            self._timer = loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._urgent = False
        by_replica: dict[str, list[dict[str, Any]]] = self._replays
        self._replays = {}
        now = self._clock()
        for out in self._dirty.values():
            frame = out.frame(out.sent)
            out.sent = out.length
            out.started = False
            for replica, seen in list(out.routes.items()):
                if now - seen > self._route_ttl:
                    del out.routes[replica]
                    continue
                by_replica.setdefault(replica, []).append(frame)
        self._dirty.clear()
        self._dirty_bytes = 0
        if not by_replica:
            return
        messages = [(replica, encode_frames(self._producer, frames)) 
                    for replica, frames in by_replica.items()]
        frames_count = sum(len(frames) for frames in by_replica.values())
        self.frames_sent += frames_count
        metrics.EVENTS_PUBLISHED.inc(frames_count)
        self._sending = asyncio.create_task(self._send_in_order(self._sending, messages))

    async def _send_in_order(
        self, previous: asyncio.Task[None] | None, messages: list[tuple[str, bytes]]
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        for replica, body in messages:
            try:
                await self._send(replica, body)
            except Exception as exc:  # a lost frame is repaired by the replica (gap -> replay)
                log.warning("live frames not sent", replica=replica, error=str(exc) or type(exc).__name__)
                metrics.PUBLISH_FAILURES.inc()
                return
            self.messages_sent += 1
            metrics.EVENT_BATCHES.inc()

    async def drain(self) -> None:
        self.flush()
        if self._sending is not None:
            await asyncio.wait([self._sending])

    def prune(self) -> None:
        """Forget finished sessions after ``keep_ended`` and stale requests for queued ones."""
        now = self._clock()
        over = [s for s, o in self.sessions.items() if o.ended_at and now - o.ended_at > self._keep_ended]
        for sid in over:
            del self.sessions[sid]
        metrics.ANSWERS_KEPT.set(len(self.sessions))
        for sid, asked in list(self._pending.items()):
            for replica in [r for r, seen in asked.items() if now - seen > self._route_ttl]:
                del asked[replica]
            if not asked:
                del self._pending[sid]
