"""The oracle: every accepted session, judged from what its client saw.

A session is accepted when its POST is answered 200. It then ends in one of three ways:

- **correct**: exactly the mock's answer, then the final event (SSE: ``done`` with the id
  length + 1; ``POST /chat``: the end of the body; OpenAI: a ``finish_reason`` and the end of
  the stream);
- **error**: an explicit error (SSE ``error`` event, ``[error]`` line, OpenAI error chunk), the
  text before it a prefix of the answer; counted apart, with its message;
- **failure**: anything else: wrong text, a gap or a duplicate (an SSE id is a position, so
  every chunk's id must be the previous id plus its length), an event after the final one, a
  non-JSON event, an event of an unknown type, a stream the server closed without a final
  event, a connection that broke where the client cannot resume, no final event before the
  deadline. ``event: queued`` (a waiting session's position, no id) is skipped.

A refused POST must be a 503 (or 429) with ``Retry-After``; any other answer to a POST is a
failure too. The oracle only reads observations: it never talks to the system.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CORRECT, ERROR, FAILURE = "correct", "error", "failure"
FINAL_TYPES = ("done", "error", "cancelled")
NEWS_EVENTS = ("queued",)
"""Named SSE events about a waiting session (its queue position): no id, no text, not an end."""
REFUSAL_STATUSES = (429, 503)
ERROR_LINE = "\n[error] "
"""How ``POST /chat`` ends a failed answer inside its plain-text body."""
CANCELLED_LINE = "\n[cancelled]\n"

# How a connection ended, as the clients record it.
EOF = "eof"
"""The server ended the body."""
DROPPED = "dropped"
"""The connection broke (reset, refused, body cut short): an SSE client reconnects."""
DEADLINE = "deadline"
"""The session's deadline passed with the connection still open."""
OPEN_AFTER_FINAL = "open after final"
"""The final event arrived but the server kept the stream open."""


Event = tuple[int | None, str | None, bytes]
"""An SSE event: its ``id`` (None without an id line), its name (None without an ``event:``
line, that is a message), its ``data``."""


@dataclass
class Read:
    """One ``GET /stream/{id}`` connection of an SSE session."""

    url: str
    last_event_id: int | None
    status: int | None = None
    events: list[Event] = field(default_factory=list)
    end: str = ""
    why: str = ""
    """What broke the connection, or the body of a non-200 answer."""


@dataclass
class Session:
    """One accepted POST and everything its client saw afterwards."""

    scenario: str
    client: str
    """``sse`` (POST /chat/async + GET /stream), ``sync`` (POST /chat), ``openai`` (the SDK)."""
    sid: str
    prompt: str
    expected: str
    post_url: str
    accepted_at: float
    reads: list[Read] = field(default_factory=list)
    body: bytes = b""
    """``sync``: the plain-text body."""
    pieces: list[str] = field(default_factory=list)
    """``openai``: the content deltas."""
    finish_reason: str | None = None
    error: str | None = None
    """``openai``: the error the SDK raised mid-stream."""
    end: str = ""
    """``sync`` and ``openai``: how the response ended (``EOF``, ``DROPPED``, ``DEADLINE``)."""
    why: str = ""
    ended_at: float | None = None
    pool: str = ""
    """With pools: the pool whose model it asked for (``""`` without pools)."""
    tier: str | None = None
    """With pools: the ``service_tier`` it sent (None: none)."""


@dataclass
class Post:
    """A POST that was not accepted (refused, or answered otherwise)."""

    scenario: str
    client: str
    url: str
    at: float
    status: int | None
    retry_after: str | None
    code: str | None
    """The error code of the body (native ``error``, or the OpenAI object's ``code``)."""
    why: str = ""
    probe: bool = False
    """Sent by the intake probe of the broker scenario, not by a user."""
    pool: str = ""
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str
    detail: str = ""
    """The error's message, or what failed."""
    resumed: bool = False
    """An SSE client reconnected after a dropped connection and the session still ended."""


class _Failed(Exception):
    pass


def judge(session: Session) -> Verdict:
    try:
        if session.client == "sse":
            return _judge_sse(session)
        if session.client == "sync":
            return _judge_sync(session)
        if session.client == "openai":
            return _judge_openai(session)
        raise _Failed(f"unknown client {session.client!r}")
    except _Failed as failed:
        return Verdict(FAILURE, str(failed), resumed=len(session.reads) > 1)


def _judge_sse(session: Session) -> Verdict:
    expected = session.expected
    position = 0
    held_id: int | None = None
    final: tuple[str, str] | None = None
    for n, read in enumerate(session.reads):
        if final is not None:
            raise _Failed(f"read {n + 1}: reconnected after the final event")
        if read.last_event_id != held_id:
            raise _Failed(
                f"read {n + 1}: resumed with Last-Event-ID {read.last_event_id}, held {held_id}"
            )
        if read.status is None:
            if read.end != DROPPED:
                raise _Failed(f"read {n + 1} on {read.url}: {read.end or 'no answer'} {read.why}".strip())
            continue  # could not connect: the client tries the next process
        if read.status != 200:
            raise _Failed(f"read {n + 1} on {read.url}: GET answered {read.status}: {read.why[:160]}")
        for event_id, name, data in read.events:
            if final is not None:
                raise _Failed(f"event after the final one: {data[:80]!r}")
            event = _json_object(data)
            if name is not None:
                if name not in NEWS_EVENTS or event.get("type") != name:
                    raise _Failed(f"unknown event {name!r}: {data[:80]!r}")
                if event_id is not None:
                    raise _Failed(f"a {name} event with an id ({event_id}): news is never replayed")
                continue
            if "chunk" in event:
                chunk = event["chunk"]
                if not isinstance(chunk, str):
                    raise _Failed(f"chunk is not text: {data[:80]!r}")
                if event_id is None:
                    raise _Failed(f"chunk without an id at position {position}")
                if event_id != position + len(chunk):
                    kind = "a gap" if event_id > position + len(chunk) else "a duplicate or overlap"
                    raise _Failed(
                        f"{kind}: a {len(chunk)}-character chunk after position {position} has id {event_id}"
                    )
                if expected[position:event_id] != chunk:
                    raise _Failed(f"wrong text at position {position}: {chunk[:40]!r}")
                position, held_id = event_id, event_id
                continue
            kind = event.get("type")
            if kind in NEWS_EVENTS:
                # A message with a type: a client that ends on any typed message would stop here.
                raise _Failed(f"a {kind} event sent as a message, not as `event: {kind}`")
            if kind == "done":
                if event_id != position + 1:
                    raise _Failed(f"done with id {event_id} at position {position}")
                final = ("done", "")
            elif kind == "error":
                if event_id is not None and event_id != position + 1:
                    raise _Failed(f"error event with id {event_id} at position {position}")
                why = str(event.get("error", ""))
                final = ("error", why if event_id is not None else f"reader timeout: {why}")
            elif kind == "cancelled":
                raise _Failed(f"cancelled at position {position}, and nobody cancelled it")
            else:
                raise _Failed(f"unknown event: {data[:80]!r}")
            if event_id is not None:
                held_id = event_id
        if final is None:
            if read.end == EOF:
                raise _Failed(f"the server closed the stream without a final event at position {position}")
            if read.end == DEADLINE:
                raise _Failed(f"hang: no final event before the deadline, at position {position}")
            if read.end != DROPPED:
                raise _Failed(f"read {n + 1}: ended {read.end!r} {read.why}")
        elif read.end == OPEN_AFTER_FINAL:
            raise _Failed("the server kept the stream open after the final event")
    resumed = any(read.end == DROPPED for read in session.reads[:-1])
    if final is None:
        last = session.reads[-1] if session.reads else None
        why = f"{last.end}: {last.why}" if last else "never read"
        raise _Failed(f"no final event, the last connection {why} (position {position})")
    kind, why = final
    if kind == "error":
        return Verdict(ERROR, why, resumed)
    if position != len(expected):
        raise _Failed(f"done after {position} of {len(expected)} characters")
    return Verdict(CORRECT, resumed=resumed)


def _judge_sync(session: Session) -> Verdict:
    try:
        text = session.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Failed(f"the body is not UTF-8: {exc}") from None
    if session.end == DEADLINE:
        raise _Failed(f"hang: the body did not end before the deadline ({len(text)} characters)")
    if session.end != EOF:
        raise _Failed(f"the connection broke after {len(text)} characters: {session.why}")
    if text == session.expected:
        return Verdict(CORRECT)
    if (at := text.find(ERROR_LINE)) >= 0:
        before, message = text[:at], text[at + len(ERROR_LINE) :]
        if not session.expected.startswith(before):
            at = _mismatch(before, session.expected)
            raise _Failed(f"wrong text before the error line at position {at}")
        return Verdict(ERROR, message.strip())
    if CANCELLED_LINE in text:
        raise _Failed("cancelled, and nobody cancelled it")
    at = _mismatch(text, session.expected)
    raise _Failed(f"wrong text: {len(text)} characters, {len(session.expected)} expected, differs at {at}")


def _judge_openai(session: Session) -> Verdict:
    text = "".join(session.pieces)
    if not session.expected.startswith(text):
        raise _Failed(f"wrong text at position {_mismatch(text, session.expected)}")
    if session.error is not None:
        return Verdict(ERROR, session.error)
    if session.end == DEADLINE:
        raise _Failed(f"hang: the stream did not end before the deadline ({len(text)} characters)")
    if session.end != EOF:
        raise _Failed(f"the connection broke after {len(text)} characters: {session.why}")
    if session.finish_reason is None:
        raise _Failed(f"the stream ended without a finish_reason after {len(text)} characters")
    if text != session.expected:
        raise _Failed(f"finish_reason {session.finish_reason!r} after {len(text)} of {len(session.expected)}")
    return Verdict(CORRECT)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        raise _Failed(f"non-JSON event: {data[:80]!r}") from None
    if not isinstance(event, dict):
        raise _Failed(f"event is not a JSON object: {data[:80]!r}")
    return event


def _mismatch(text: str, expected: str) -> int:
    for i, (a, b) in enumerate(zip(text, expected, strict=False)):
        if a != b:
            return i
    return min(len(text), len(expected))


def refusal_problem(post: Post) -> str | None:
    """What is wrong with a POST that was not accepted; None for a proper refusal."""
    if post.status is None:
        return f"POST {post.url} got no answer: {post.why}"
    if post.status not in REFUSAL_STATUSES:
        return f"POST {post.url} answered {post.status}: {post.why[:160]}"
    if not (post.retry_after and post.retry_after.isascii() and post.retry_after.isdigit()):
        return f"POST {post.url} refused with {post.status} without a Retry-After ({post.retry_after!r})"
    if not post.code:
        return f"POST {post.url} refused with {post.status} without an error code: {post.why[:160]}"
    return None


@dataclass
class Tally:
    """The counts of one scenario."""

    scenario: str
    accepted: int = 0
    correct: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(session id or POST, what failed)."""
    resumed: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    """Proper refusals, by status and code (``503 broker_unavailable``)."""
    refused_by_probe: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "correct": self.correct,
            "errors": dict(self.errors),
            "failures": [{"session": sid, "what": what} for sid, what in self.failures],
            "resumed": self.resumed,
            "by_client": dict(self.by_client),
            "refused": dict(self.refused),
            "refused_by_probe": self.refused_by_probe,
        }


def tally(scenario: str, sessions: list[Session], posts: list[Post]) -> Tally:
    counts = Tally(scenario)
    for session in sessions:
        verdict = judge(session)
        counts.accepted += 1
        counts.by_client[session.client] += 1
        counts.resumed += verdict.resumed
        if verdict.outcome == CORRECT:
            counts.correct += 1
        elif verdict.outcome == ERROR:
            counts.errors[verdict.detail[:200]] += 1
        else:
            counts.failures.append((f"{session.client} {session.sid}", verdict.detail))
    for post in posts:
        problem = refusal_problem(post)
        if problem is not None:
            counts.failures.append((f"{post.client} POST", problem))
        else:
            counts.refused[f"{post.status} {post.code}"] += 1
            counts.refused_by_probe += post.probe
    return counts
