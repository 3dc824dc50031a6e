"""A minimal Server-Sent Events reader, written against the spec rather than the server code.

Lines ``id: N`` and ``data: ...`` build an event, a blank line dispatches it, lines starting
with ``:`` are comments (heartbeats). Everything the stream delivered is kept in arrival order
so tests can assert on ordering, ids and text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = ("done", "error", "cancelled")


@dataclass(frozen=True, slots=True)
class Event:
    id: int | None
    data: dict[str, Any]
    name: str | None = None  # the SSE ``event:`` field

    @property
    def kind(self) -> str:
        if "chunk" in self.data:
            return "chunk"
        return str(self.data.get("type"))


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


@dataclass(slots=True)
class Transcript:
    """What one SSE connection delivered."""

    status: int
    headers: httpx.Headers
    items: list[Event | Comment] = field(default_factory=list)
    ended_by_server: bool = False
    body: bytes = b""
    """The body of a response that is not a stream (status other than 200)."""

    @property
    def events(self) -> list[Event]:
        return [item for item in self.items if isinstance(item, Event)]

    @property
    def ids(self) -> list[int | None]:
        return [event.id for event in self.events]

    @property
    def answer_ids(self) -> list[int | None]:
        """The ids of the answer's events: queue positions are news, sent while a busy machine
        keeps the task waiting, and never part of the answer."""
        return [event.id for event in self.events if event.kind != "queued"]

    @property
    def chunks(self) -> list[str]:
        return [event.data["chunk"] for event in self.events if event.kind == "chunk"]

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def last(self) -> Event:
        assert self.events, "the stream delivered no event"
        return self.events[-1]

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.last.kind in TERMINAL


async def parse(lines: AsyncIterator[str]) -> AsyncIterator[Event | Comment]:
    event_id: int | None = None
    name: str | None = None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield Event(event_id, json.loads("\n".join(data)), name)
            event_id, name, data = None, None, []
            continue
        if line.startswith(":"):
            yield Comment(line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = int(value)
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)


async def read_stream(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: int | None = None,
    max_events: int | None = None,
    timeout: float = 30.0,
    opened: asyncio.Event | None = None,
    on_item: Callable[[Event | Comment], None] | None = None,
) -> Transcript:
    """Read ``url`` until a done/error event, the end of the stream, or ``max_events`` events.

    Leaving early closes the connection, as a client that goes away would. ``opened`` is set
    once the response headers have arrived; ``on_item`` sees every event and comment as it
    arrives. Raises ``TimeoutError`` if nothing of this ends
    within ``timeout`` seconds.
    """
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with asyncio.timeout(timeout), client.stream("GET", url, headers=headers) as response:
        transcript = Transcript(response.status_code, response.headers)
        if opened is not None:
            opened.set()
        if response.status_code != 200:
            transcript.body = await response.aread()
            return transcript
        count = 0
        terminal = False
        async with contextlib.aclosing(parse(response.aiter_lines())) as items:
            async for item in items:
                if terminal:
                    # After the final event only heartbeats may come, then the end of the stream.
                    if isinstance(item, Event):
                        raise AssertionError(f"event after the final one: {item!r}")
                    continue
                transcript.items.append(item)
                if on_item is not None:
                    on_item(item)
                if isinstance(item, Event):
                    count += 1
                    terminal = item.kind in TERMINAL
                    if not terminal and max_events is not None and count >= max_events:
                        return transcript
        transcript.ended_by_server = True
        return transcript


def assert_positions(transcript: Transcript, *, start: int = 0) -> None:
    """Every id is a position: a chunk's id is where the text stands after it, the final
    event's id is one past the end. ``start`` is where the read began (its Last-Event-ID)."""
    position = start
    for event in transcript.events:
        if event.kind == "chunk":
            position += len(event.data["chunk"])
            assert event.id == position, (event.id, position, transcript.ids)
        elif event.kind in TERMINAL:
            # A reader's own timeout is an error event without id (never stored, never replayed).
            allowed = (position + 1, None) if event.kind == "error" else (position + 1,)
            assert event.id in allowed, (event.id, position, transcript.ids)


def assert_queued(transcript: Transcript) -> list[int]:
    """Queue positions come before any text, without ids, well formed and never rising;
    returns them."""
    positions: list[int] = []
    seen_text = False
    for event in transcript.events:
        if event.kind == "chunk":
            seen_text = True
        elif event.kind == "queued":
            assert not seen_text, f"a queue position after text: {transcript.events}"
            assert event.id is None, event
            assert event.name == "queued", event  # named: an EventSource's onmessage never sees it
            # ``waiting_for`` only while the session's pool has no worker (scaled to zero)
            assert set(event.data) - {"waiting_for"} == {"type", "position", "eta_s"}, event.data
            position, eta = event.data["position"], event.data["eta_s"]
            assert isinstance(position, int) and position >= 1, event.data
            assert eta is None or (isinstance(eta, int | float) and eta >= 0), event.data
            assert not positions or position <= positions[-1], f"position rose: {[*positions, position]}"
            positions.append(position)
    return positions


def assert_complete(transcript: Transcript, expected: str, *, start: int = 0) -> None:
    """Chunks spell exactly ``expected``, ids are positions from ``start``, the last is done;
    before the text, only queue positions."""
    assert transcript.status == 200, transcript.status
    assert transcript.events, "no event at all"
    kinds = [event.kind for event in transcript.events]
    assert transcript.last.data == {"type": "done"}, f"last event is {transcript.last.data!r}"
    assert set(kinds[:-1]) <= {"chunk", "queued"}, f"unexpected events before done: {kinds}"
    assert all(set(event.data) == {"chunk"} for event in transcript.events[:-1] if event.kind == "chunk")
    assert_queued(transcript)
    assert transcript.text == expected, _diff(transcript.text, expected)
    assert_positions(transcript, start=start)
    assert transcript.ended_by_server, "the server did not close the stream after done"


def assert_error_end(transcript: Transcript) -> str:
    """The stream ended with one well-formed error event, ids are positions; returns its message."""
    assert transcript.status == 200, transcript.status
    assert_positions(transcript)
    last = transcript.last.data
    assert last.get("type") == "error" and set(last) == {"type", "error"}, last
    assert isinstance(last["error"], str) and last["error"], last
    assert all(event.kind in ("chunk", "queued") for event in transcript.events[:-1]), transcript.events
    assert_queued(transcript)
    assert transcript.ended_by_server, "the server did not close the stream after the error"
    return last["error"]


def _diff(got: str, expected: str) -> str:
    common = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    return (
        f"answer differs at character {common} (got {len(got)} chars, expected {len(expected)}): "
        f"got {got[common:common + 40]!r}, expected {expected[common:common + 40]!r}"
    )
