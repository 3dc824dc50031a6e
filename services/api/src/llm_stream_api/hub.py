"""The session hub: every answer event of the last ``session_ttl`` seconds, in memory.

Each API process tails the events stream into its own hub. The stream is totally ordered and
every process applies the same events in the same order with the same rules, so every process
derives the same numbered event list per session: SSE ids agree across processes and replicas,
which is what makes ``Last-Event-ID`` resume exact anywhere.

Chunks carry their character offset in the answer. A redelivered task regenerates the answer
from offset 0; the hub keeps only text beyond what it already has, and if a regenerated piece
disagrees with text already published, the session ends with an error instead of a garbled
answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson
from mqcommon.schemas import StreamEvent

DONE = "done"
ERROR = "error"
TIMEOUT = "timeout"  # an error decided by a reader that waited too long; never stored
CHUNK = "chunk"

DIVERGED = "the answer was regenerated after a worker failure and differs from what was sent"


# One numbered event of a session: (kind, text), where text is the chunk or the error
# message. A plain tuple of strings on purpose: CPython stops tracking such tuples in the
# garbage collector (not tuple subclasses), so a hub holding thousands of answers does not
# make every full collection walk every event.
HubEvent = tuple[str, str]


def event_data(event: HubEvent) -> bytes:
    """The SSE data line's JSON, built when sent. Keeping it instead would cost ~4 KiB an
    event: orjson's result holds on to its whole output buffer."""
    kind, text = event
    if kind == CHUNK:
        return b'{"chunk":%s}' % orjson.dumps(text)
    if kind == DONE:
        return b'{"type": "done"}'
    return b'{"type": "error", "error": %s}' % orjson.dumps(text)


def chunk_event(text: str) -> HubEvent:
    return (CHUNK, text)


def done_event() -> HubEvent:
    return (DONE, "")


def error_event(message: str) -> HubEvent:
    return (ERROR, message)


def timeout_event(message: str) -> HubEvent:
    return (TIMEOUT, message)


@dataclass(slots=True)
class Session:
    id: str
    touched: float
    events: list[HubEvent] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    length: int = 0
    accepted_at: float | None = None  # wall clock of the POST that queued it
    started: bool = False
    ended: bool = False
    trace_id: str | None = None
    reserved: bool = False  # a POST of this process is queueing it right now
    readers: int = 0
    _waiter: asyncio.Event | None = None

    @property
    def known(self) -> bool:
        """Some process accepted it or some worker produced for it."""
        return self.reserved or self.accepted_at is not None or self.started or bool(self.events)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def wait(self, timeout: float) -> bool:
        """Wait until something is appended; False on timeout."""
        if self._waiter is None:
            self._waiter = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter.wait()
            return True
        except TimeoutError:
            return False

    def _notify(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None


class SessionHub:
    def __init__(self, *, ttl_s: float, max_sessions: int, max_bytes: int, clock=time.monotonic):
        self._ttl = ttl_s
        self._max_sessions = max_sessions
        self._max_bytes = max_bytes
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def session(self, session_id: str) -> Session:
        """The session, created empty if this process has not heard of it yet."""
        found = self._sessions.get(session_id)
        if found is None:
            found = Session(session_id, self._clock())
            self._sessions[session_id] = found
            if len(self._sessions) > self._max_sessions:
                self._evict_oldest()
        return found

    def served_sessions(self) -> list[str]:
        return [s.id for s in self._sessions.values() if s.readers > 0 and not s.ended]

    def apply(self, event: StreamEvent) -> None:
        session = self.session(event.session_id)
        session.touched = self._clock()
        self._sessions.move_to_end(event.session_id)
        if event.trace_id and session.trace_id is None:
            session.trace_id = event.trace_id
        if session.ended:
            return
        kind = event.kind
        if kind == "chunk":
            self._merge_chunk(session, event.offset, event.text)
        elif kind == "done":
            if event.offset == session.length:
                self._end(session, done_event())
            elif event.offset < session.length:
                self._end(session, error_event(DIVERGED))
            # offset beyond what we hold: an earlier batch was lost, the task is redelivered
        elif kind == "error":
            self._end(session, error_event(event.error or "generation failed"))
        elif kind == "accepted":
            if session.accepted_at is None:
                session.accepted_at = event.at
            session._notify()
        elif kind == "started":
            session.started = True
            session._notify()

    def sweep(self) -> int:
        """Forget sessions untouched for ``ttl`` with no reader; returns how many."""
        horizon = self._clock() - self._ttl
        stale = [s.id for s in self._sessions.values() if s.touched < horizon and s.readers == 0]
        for sid in stale:
            del self._sessions[sid]
        return len(stale)

    # -- internals -------------------------------------------------------------------------

    def _merge_chunk(self, session: Session, offset: int, text: str) -> None:
        held = session.length
        if offset > held or not text:
            return  # a gap: an earlier batch was lost and the task will be redelivered
        end = offset + len(text)
        if end <= held:
            if session.text[offset:end] != text:
                self._end(session, error_event(DIVERGED))
            return
        overlap = held - offset
        if overlap and session.text[offset:held] != text[:overlap]:
            self._end(session, error_event(DIVERGED))
            return
        fresh = text[overlap:]
        if session.length + len(fresh) > self._max_bytes:
            self._end(session, error_event("answer exceeds SESSION_MAX_BYTES"))
            return
        session.parts.append(fresh)
        session.length += len(fresh)
        session.events.append(chunk_event(fresh))
        session._notify()

    def _end(self, session: Session, event: HubEvent) -> None:
        session.events.append(event)
        session.ended = True
        session._notify()

    def _evict_oldest(self) -> None:
        for sid, session in self._sessions.items():
            if session.readers == 0:
                del self._sessions[sid]
                return
