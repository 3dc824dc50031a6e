"""What the cluster scenarios measure besides the oracle's verdict.

- :class:`TimedClients`: the clients of :mod:`clients`, which also note when every POST was
  sent, how long every refused POST took, and when every SSE event and SDK delta arrived (so
  that a stall between two frames can be measured). They decide nothing either.
- :class:`IntakeProbe`: POSTs to one API process every ``every_s`` (without waiting for the
  one before, and ignoring ``Retry-After``: it measures) from :meth:`start` to :meth:`stop`;
  every accepted probe is read to its end and judged like any session.
- :func:`refused_spans`: the spans in which a probe's POSTs were refused (from the first
  refused one to the next accepted one), :func:`longest_stall` the longest wait between two
  frames of a session under way, :func:`judge_cancels` the sessions whose client cancelled
  them (the oracle fails any ``cancelled`` nobody asked for).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from clients import Answer, Clients, position
from oracle import DROPPED, OPEN_AFTER_FINAL, Post, Read, Session, Tally

PROBE_OUTSTANDING = 64
"""Most probe POSTs under way at once (a POST waits at most ENQUEUE_TIMEOUT_S)."""


class TimedEvents(list):  # type: ignore[type-arg]
    """A list that notes when each item was added (``read.events += ...``, ``pieces.append``)."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        now = time.monotonic()
        self.times: list[float] = [now] * len(self)

    def __iadd__(self, items: Any) -> TimedEvents:  # type: ignore[override]
        items = list(items)
        self.times += [time.monotonic()] * len(items)
        super().__iadd__(items)
        return self

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


class _Reads(list):  # type: ignore[type-arg]
    def append(self, read: Read) -> None:
        read.events = TimedEvents(read.events)
        super().append(read)


class _Sessions(list):  # type: ignore[type-arg]
    def append(self, session: Session) -> None:
        session.reads = _Reads(session.reads)
        for read in session.reads:
            read.events = TimedEvents(read.events)
        session.pieces = TimedEvents(session.pieces)
        super().append(session)


class TimedClients(Clients):
    """:class:`clients.Clients` that also keep the times of what they saw."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions = _Sessions()
        self.sent_at: dict[str, float] = {}
        """Prompt -> when its POST was sent (a prompt is asked once)."""
        self.took: dict[int, float] = {}
        """``id(post)`` -> seconds from sending the refused POST to its answer."""

    def prompt(self, answer: Answer | None = None) -> tuple[str, str]:
        text, expected = super().prompt(answer)
        self.sent_at[text] = time.monotonic()
        return text, expected

    def _refused(self, client: str, url: str, sent: float, *args: Any, **kwargs: Any) -> Post:
        post = super()._refused(client, url, sent, *args, **kwargs)
        self.took[id(post)] = time.monotonic() - sent
        return post

    def post_seconds(self, session: Session) -> float | None:
        sent = self.sent_at.get(session.prompt)
        return None if sent is None else session.accepted_at - sent


# -- the intake probe ----------------------------------------------------------------------------


@dataclass
class Try:
    sent: float
    done: float
    accepted: bool
    status: int | None = None


@dataclass
class IntakeProbe:
    clients: TimedClients
    url: str
    label: str
    every_s: float = 0.2
    tries: list[Try] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sending; wait for the POSTs under way and the reads of accepted probes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _run(self) -> None:
        began = time.monotonic()
        n = 0
        while True:
            if len(self._pending) < PROBE_OUTSTANDING:
                task = asyncio.create_task(self._one())
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            n += 1
            await asyncio.sleep(max(0.0, began + n * self.every_s - time.monotonic()))

    async def _one(self) -> None:
        sent = time.monotonic()
        outcome = await self.clients.post_sse(self.url, probe=True)
        accepted = isinstance(outcome, Session)
        status = 200 if accepted else outcome.status  # type: ignore[union-attr]
        self.tries.append(Try(sent, time.monotonic(), accepted, status))
        if isinstance(outcome, Session):
            await self.clients.read(outcome, [self.url])

    def spans(self) -> list[tuple[float, float, int]]:
        return refused_spans(self.tries)


def refused_spans(tries: list[Try]) -> list[tuple[float, float, int]]:
    """(start, seconds, refused POSTs) of each run of refused tries (in the order they were
    sent): from sending the first refused one to the acceptance of the next accepted one (to
    the last answer when none): how long a client could not get a session in."""
    spans = []
    ordered = sorted(tries, key=lambda t: t.sent)
    start: float | None = None
    count = 0
    for t in ordered:
        if not t.accepted:
            if start is None:
                start, count = t.sent, 0
            count += 1
        elif start is not None:
            spans.append((start, t.done - start, count))
            start = None
    if start is not None:
        spans.append((start, max(t.done for t in ordered) - start, count))
    return spans


def longest(spans: list[tuple[float, float, int]]) -> float:
    return round(max((s for _, s, _ in spans), default=0.0), 2)


# -- stalls --------------------------------------------------------------------------------------


def frame_times(session: Session) -> list[float]:
    """When the client heard from its session: every SSE event (text, the final event, and
    the queue positions a waiting session gets at least every 2 s), every SDK delta.
    ``POST /chat`` bodies are not timed."""
    times: list[float] = []
    for read in session.reads:
        times += getattr(read.events, "times", [])
    times += getattr(session.pieces, "times", [])
    return sorted(times)


def longest_stall(sessions: list[Session], since: float, until: float) -> dict[str, Any]:
    """The longest silence of a session under way between ``since`` and ``until``: the longest
    wait between two of its events (or between its acceptance and the first), over the gaps
    that overlap that time."""
    worst: tuple[float, str, float] = (0.0, "", 0.0)
    over_10 = 0
    timed = 0
    for session in sessions:
        if session.client == "sync":
            continue
        end = session.ended_at or time.monotonic()
        if session.accepted_at > until or end < since:
            continue
        timed += 1
        points = [session.accepted_at, *frame_times(session)]
        gap_max = 0.0
        for a, b in itertools.pairwise(points):
            if b >= since and a <= until and b - a > gap_max:
                gap_max = b - a
                if gap_max > worst[0]:
                    worst = (gap_max, f"{session.client} {session.sid}", a - since)
        over_10 += gap_max > 10.0
    return {
        "longest_stall_s": round(worst[0], 2),
        "longest_stall_session": worst[1],
        "longest_stall_began_s": round(worst[2], 2),
        "stalled_over_10s": over_10,
        "stall_sessions_timed": timed,
    }


# -- cancels and queue positions -----------------------------------------------------------------

CANCELLED_UNASKED = "and nobody cancelled it"


@dataclass
class Cancel:
    """One client's cancel of one session (``DELETE /sessions/{id}``, retried on 503)."""

    sid: str
    asked_at: float
    answered_at: float | None = None
    status: int | None = None
    outcome: str = ""
    """The answer's ``status``: ``cancelled``, ``cancelling``, ``finished``."""
    refusals: int = 0
    text_when_asked: int = 0
    """Characters the client held when it asked."""


def news(session: Session, name: str = "queued") -> list[tuple[float, dict[str, Any]]]:
    """(arrival, body) of the session's named news events (``queued``: positions)."""
    found = []
    for read in session.reads:
        stamps = getattr(read.events, "times", [time.monotonic()] * len(read.events))
        for (_, event_name, data), at in zip(read.events, stamps, strict=True):
            if event_name == name:
                with contextlib.suppress(ValueError):
                    found.append((at, orjson.loads(data)))
    return found


def cancelled_at(session: Session) -> tuple[float | None, bool]:
    """When the ``cancelled`` final event arrived, and whether it was well-formed: its id one
    past the text held, the last event of the last read, and the stream closed after it."""
    for n, read in enumerate(session.reads):
        stamps = getattr(read.events, "times", [0.0] * len(read.events))
        held = 0
        for k, ((event_id, name, data), at) in enumerate(zip(read.events, stamps, strict=True)):
            if event_id is not None and name is None and b'"chunk"' in data:
                held = event_id
            if name is None and b'"cancelled"' in data:
                proper = (
                    event_id == (held or (read.last_event_id or 0)) + 1
                    and k == len(read.events) - 1
                    and n == len(session.reads) - 1
                    and read.end != OPEN_AFTER_FINAL
                )
                return at, proper
    return None, False


def judge_cancels(counts: Tally, sessions: list[Session], cancels: dict[str, Cancel]) -> dict[str, Any]:
    """Judge the sessions their clients cancelled, in ``counts`` (the oracle's tally).

    The oracle fails a ``cancelled`` (it checked everything before it: text, ids): for a
    session whose client asked first, a well-formed one is an end like an error event,
    counted as ``cancelled, as its client asked``. A session whose cancel was taken (200 or 202
    ``cancelled``/``cancelling``) while it held no text, and that then ran to ``done``, fails:
    its task was generated although cancelled while it waited."""
    by_sid = {s.sid: s for s in sessions}
    kept = []
    facts: dict[str, Any] = {
        "cancels_asked": len(cancels),
        "cancelled": 0,
        "cancel_too_late": 0,
        "cancel_refusals": sum(c.refusals for c in cancels.values()),
    }
    latencies = []
    for label, what in counts.failures:
        sid = label.split()[-1]
        cancel = cancels.get(sid)
        if cancel is None or CANCELLED_UNASKED not in what:
            kept.append((label, what))
            continue
        at, proper = cancelled_at(by_sid[sid])
        if at is None or not proper:
            kept.append((label, f"{what} (malformed cancelled event)"))
        elif at < cancel.asked_at:
            kept.append((label, f"cancelled {cancel.asked_at - at:.2f} s before its client asked"))
        else:
            counts.errors["cancelled, as its client asked"] += 1
            facts["cancelled"] += 1
            latencies.append(at - cancel.asked_at)
    counts.failures = kept
    for sid, cancel in cancels.items():
        session = by_sid.get(sid)
        if session is None or cancel.outcome not in ("cancelled", "cancelling"):
            continue
        done = position(session) == len(session.expected) and cancelled_at(session)[0] is None
        if done:
            if cancel.text_when_asked == 0 and cancel.outcome == "cancelling":
                counts.correct -= 1  # the oracle found it correct: it is not, for a cancelled one
                counts.failures.append(
                    (
                        f"sse {sid}",
                        "cancel lost: answered 202 cancelling while the session waited in the queue "
                        "(no text), and it was generated to the end",
                    )
                )
            else:
                facts["cancel_too_late"] += 1
    facts["cancel_latency_max_s"] = round(max(latencies), 2) if latencies else None
    facts["cancel_latency_median_s"] = round(sorted(latencies)[len(latencies) // 2], 2) if latencies else None
    facts["cancels_unanswered"] = sum(1 for c in cancels.values() if c.answered_at is None)
    return facts


def dropped_read(url: str, last_event_id: int | None, why: str) -> Read:
    """A read that the client itself ended (to resume elsewhere)."""
    return Read(url, last_event_id, end=DROPPED, why=why)
