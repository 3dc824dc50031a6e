"""Following a session in the hub: its text from a position on, its queue position, its end.

Every dialect reads a session through ``follow``. An SSE id is a position in the answer: a
chunk's id is the number of characters sent once it is read, and the final event's id is that
number plus one. Positions mean the same on every replica, so ``Last-Event-ID: N`` continues
at character N anywhere, with no gap and no duplicate; events without an id (waiting,
timeouts) are never replayed. A session nobody knows ends with an error event after
``stream_wait_timeout``; a known one that stays silent, after ``stream_idle_timeout``.
``docs/events.md`` lists every event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from mqcommon.parts import CONTENT, Part, of_key

from llm_stream_api.sessions.hub import TIMEOUT, Session, SessionHub
from llm_stream_api.settings import APISettings

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


class Positions(Protocol):
    """Queue positions of waiting sessions (``broker.queue_positions.QueuePositions``)."""

    def watch(self, session: Session) -> None: ...

    def unwatch(self, session: Session) -> None: ...

    def eta(self, position: int, session: Session | None = None) -> float | None: ...

    def waiting_for(self, session: Session) -> str | None:
        """What a waiting session waits for besides the tasks ahead: ``worker_start`` while its
        pool has no worker (scaled to zero); None otherwise."""


@dataclass(slots=True)
class Piece:
    """What a reader gets next: new text up to ``position``, or the end (``kind`` set)."""

    position: int
    text: str = ""  # every part of the answer from the previous position to ``position``
    parts: list[Part] | None = None  # ``text`` cut into its parts; None when it is all content
    kind: str | None = None
    error: str | None = None
    queue_position: int | None = None  # QUEUED pieces
    eta_s: float | None = None
    waiting_for: str | None = None

    @property
    def content(self) -> str:
        """The answer's text in this piece, without its other parts."""
        return self.text if self.parts is None else of_key(self.parts, CONTENT)


async def follow(
    hub: SessionHub, session_id: str, after: int, settings: APISettings, discover: Discover,
    queue: Positions | None = None,
) -> AsyncIterator[Piece]:
    """Yield the session's text from character ``after`` on, then how it ended.

    With ``queue``, a session waiting in the task queue also yields ``QUEUED`` pieces: its
    position at once, on every change, and every ``QUEUED_REPEAT_S``.
    """
    session = hub.session(session_id)
    try:
        with session.read():
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
                    yield Piece(len(text), text[position:], session.parts(position))
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
                            position, kind=QUEUED, queue_position=told[0], eta_s=queue.eta(told[0], session),
                            waiting_for=queue.waiting_for(session),
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
        if queue is not None:
            queue.unwatch(session)  # after the reader is gone: it counts readers
