"""The session hub: the sessions this API replica holds, each as one string of answer text.

A replica holds the sessions it accepted and the ones a client reads from it; nothing else
reaches it (see docs/adr/0002-scale-out-return-path.md). Frames carry their character offset,
so whatever their boundaries (live flushes, a worker's replay, a transcript from history),
every replica derives the same text, and a position in it means the same thing everywhere:
SSE ids are positions, which is what makes ``Last-Event-ID`` resume exact on any replica.

The text is every part of the answer on one line of positions (mqcommon.parts): ``kinds``
says which part each character is, and stays None while the answer is plain text.

A redelivered task regenerates the answer from offset 0: the hub keeps only text beyond what
it holds, and if a regenerated piece disagrees with text already held, the session ends with
an error instead of a garbled answer. A frame that starts beyond the held text is a gap (a
lost message): the hub reports it and the replica asks for a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from mqcommon.parts import CONTENT, Kinds, Part, Run, of_key
from mqcommon.schemas import End, Frame, HistoryRecord

from llm_stream_api import metrics

DONE, ERROR, CANCELLED = "done", "error", "cancelled"
TIMEOUT = "timeout"  # an error decided by a reader that waited too long; never stored

DIVERGED = "the answer was regenerated after a worker failure and differs from what was sent"
TOO_LONG = "answer exceeds SESSION_MAX_BYTES"


class Session:
    """One answer. About 200 bytes plus the text (one ``str``, 1 byte per ASCII character)."""

    __slots__ = (
        "_waiter", "accepted_at", "end_kind", "error", "error_param", "finish", "id", "kinds", "line",
        "looked_up", "lookup_failed", "owner", "queue_position", "readers", "reserved", "started", "text",
        "touched", "trace_id", "tracked", "usage",
    )

    def __init__(self, session_id: str, touched: float) -> None:
        self.id = session_id
        self.touched = touched
        self.text = ""
        self.kinds: Kinds | None = None  # the parts of ``text``; None while it is all content
        self.finish: str | None = None  # the LLM's finish reason, when a worker relayed it
        self.error_param: str | None = None  # the request field the LLM's error named
        self.end_kind: str | None = None
        self.error: str | None = None
        self.usage: dict[str, Any] | None = None  # the LLM's token usage, when the task asked for it
        self.accepted_at: float | None = None  # wall clock of the POST that queued it
        self.started = False
        self.trace_id: str | None = None
        self.owner: str | None = None  # id of the API key that created it (``keys``); None: keys off
        self.reserved = False  # a POST of this replica is queueing it right now
        self.tracked = False  # this replica receives its frames (accepted here, or asked for)
        self.looked_up = False  # the history has been read for it at least once
        self.lookup_failed = False  # the last read of the history failed (the broker was away)
        self.readers = 0
        self.queue_position: int | None = None  # while it waits: 1 = the next task to start
        self.line: str | None = None  # the task queue it waits in, once known (ADR 0006)
        self._waiter: asyncio.Event | None = None

    @property
    def known(self) -> bool:
        """Some replica accepted it or some worker produced for it."""
        return (
            self.reserved or self.accepted_at is not None or self.started or bool(self.text)
            or self.end_kind is not None
        )

    @property
    def ended(self) -> bool:
        return self.end_kind is not None

    @property
    def content(self) -> str:
        """The answer's text alone, without its other parts."""
        return self.text if self.kinds is None else of_key(self.kinds.parts(self.text, 0), CONTENT)

    def parts(self, start: int = 0, stop: int | None = None) -> list[Part] | None:
        """The parts of ``text[start:stop]``; None while the answer is plain text."""
        return None if self.kinds is None else self.kinds.parts(self.text, start, stop)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """Count a reader while the block runs: a session with readers is served here (it is
        announced to the workers) and never evicted or swept."""
        self.readers += 1
        try:
            yield self
        finally:
            self.readers -= 1

    async def wait(self, timeout: float) -> bool:
        """Wait until something changes; False on timeout."""
        if self._waiter is None:
            self._waiter = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter.wait()
            return True
        except TimeoutError:
            return False

    def notify(self) -> None:
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None


def _held_kinds(session: Session) -> Kinds:
    """The session's kinds, made explicit (all content) while it is plain text."""
    if session.kinds is not None:
        return session.kinds
    kinds = Kinds()
    kinds.add(CONTENT, len(session.text))
    return kinds


def _ignore(_: str) -> None:
    return None


def _same_owner(session: Session, owner: str | None) -> bool:
    """Learn the session's owner from a frame or record; False if it names another one."""
    if owner is None or session.owner == owner:
        return True
    if session.owner is None:
        session.owner = owner
        session.notify()
        return True
    return False


class SessionHub:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_sessions: int,
        max_bytes: int,
        unknown_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._unknown_ttl = unknown_ttl_s
        self._max_sessions = max_sessions
        self._max_bytes = max_bytes
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.on_gap: Callable[[str], None] = _ignore

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def session(self, session_id: str) -> Session:
        """The session, created empty if this replica has not heard of it yet."""
        found = self._sessions.get(session_id)
        if found is None:
            found = Session(session_id, self._clock())
            self._sessions[session_id] = found
            if len(self._sessions) > self._max_sessions:
                self._evict_oldest()
        return found

    def accept(
        self, session_id: str, accepted_at: float, trace_id: str | None, *, tracked: bool = True,
        owner: str | None = None, line: str | None = None,
    ) -> Session:
        """A POST of this replica queued the session in ``line``; ``tracked``: its frames come here."""
        session = self.session(session_id)
        session.line = session.line or line
        session.tracked = session.tracked or tracked
        session.owner = session.owner or owner
        if session.accepted_at is None:
            session.accepted_at = accepted_at
            session.trace_id = session.trace_id or trace_id
        session.notify()
        return session

    def served_sessions(self) -> list[str]:
        return [s.id for s in self._sessions.values() if s.readers > 0 and not s.ended]

    def tracked_sessions(self) -> list[str]:
        """Unfinished sessions this replica wants live frames for."""
        return [
            s.id for s in self._sessions.values()
            if s.tracked and not s.ended and (s.readers > 0 or s.known)
        ]

    # -- applying what arrives -------------------------------------------------------------

    def apply(self, frame: Frame) -> bool:
        """Merge a live frame; False when the session is not held here."""
        session = self._sessions.get(frame.session_id)
        if session is None:
            return False
        if not _same_owner(session, frame.owner):
            return True  # another key's session under the same id: never mixed into this one
        self._touch(session)
        if frame.trace_id and session.trace_id is None:
            session.trace_id = frame.trace_id
        if session.ended:
            return True
        if frame.started and not session.started:
            session.started = True
            session.notify()
        if frame.text and not self._merge(session, frame.offset, frame.text, frame.kinds):
            return True
        if frame.end is not None:
            self._apply_end(session, frame.end)
        return True

    def apply_record(self, record: HistoryRecord) -> None:
        """Merge what the history stream holds for a session (acceptance, transcript)."""
        session = self.session(record.session_id)
        if not _same_owner(session, record.owner):
            return
        self._touch(session)
        if record.trace_id and session.trace_id is None:
            session.trace_id = record.trace_id
        if record.kind == "accepted":
            if session.accepted_at is None:
                session.accepted_at = record.at
            session.line = session.line or record.line
            session.notify()
        elif record.kind == "transcript" and not session.ended and record.end is not None:
            session.started = True
            if record.text and not self._merge(session, 0, record.text, record.kinds):
                return
            self._apply_end(session, record.end)

    def sweep(self) -> int:
        """Forget sessions untouched for ``ttl`` (never-known ones sooner) with no reader."""
        now = self._clock()
        stale = [
            s.id for s in self._sessions.values()
            if s.readers == 0 and now - s.touched > (self._ttl if s.known else self._unknown_ttl)
        ]
        for sid in stale:
            del self._sessions[sid]
        return len(stale)

    # -- internals -------------------------------------------------------------------------

    def _touch(self, session: Session) -> None:
        session.touched = self._clock()
        self._sessions.move_to_end(session.id)

    def _merge(self, session: Session, offset: int, text: str, kinds: list[Run] | None = None) -> bool:
        """Add ``text`` (its parts: ``kinds``, None for all content) at ``offset``; False if the
        session ended or a gap was found."""
        held = len(session.text)
        if offset > held:
            metrics.LIVE_GAPS.inc()
            self.on_gap(session.id)
            return False
        end = offset + len(text)
        overlap = min(held, end) - offset
        if overlap and (
            session.text[offset:offset + overlap] != text[:overlap]
            or ((kinds is not None or session.kinds is not None)
                and not _held_kinds(session).agrees(offset, kinds or [(CONTENT, len(text))]))
        ):
            self._end(session, ERROR, DIVERGED)
            return False
        if end <= held:
            return True
        if end > self._max_bytes:
            self._end(session, ERROR, TOO_LONG)
            return False
        if kinds is not None or session.kinds is not None:
            session.kinds = _held_kinds(session)
            session.kinds.extend(kinds or [(CONTENT, len(text))], skip=overlap)
        session.text += text[overlap:]
        session.notify()
        return True

    def _apply_end(self, session: Session, end: End) -> None:
        held = len(session.text)
        if end.usage is not None:
            session.usage = end.usage
        if end.finish is not None:
            session.finish = end.finish
        session.error_param = end.param
        if end.kind != DONE:
            self._end(session, end.kind, end.error or "generation failed")
        elif end.length == held:
            self._end(session, DONE, None)
        elif end.length < held:
            self._end(session, ERROR, DIVERGED)
        else:  # text is missing: a lost message
            metrics.LIVE_GAPS.inc()
            self.on_gap(session.id)

    def _end(self, session: Session, kind: str, error: str | None) -> None:
        session.end_kind = kind
        session.error = error
        session.notify()

    def _evict_oldest(self) -> None:
        for sid, session in self._sessions.items():
            if session.readers == 0:
                del self._sessions[sid]
                return
