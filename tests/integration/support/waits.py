"""Waits for what a test needs to have happened, instead of sleeps that hope it has.

Each polls a real observation (the mock LLM's record of requests, a stream's queue events)
until it holds, with a generous deadline: a slow machine makes a test slower, not red.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from .sse import Event, read_stream

POLL_S = 0.05
DEFAULT_TIMEOUT_S = 60.0


async def until(
    condition: Callable[[], Awaitable[bool]], *, what: str, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:g} s")
        await asyncio.sleep(POLL_S)


async def llm_was_asked(
    client: httpx.AsyncClient, mock_url: str, texts: list[str], *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Until the mock LLM has received a request for each of ``texts`` (their generations began)."""

    async def asked() -> bool:
        report = (await client.get(f"{mock_url}/debug/streams")).json()
        return set(texts) <= set(report["requested"])

    await until(asked, what=f"the LLM asked for {len(texts)} prompts", timeout=timeout)


async def queue_position(
    client: httpx.AsyncClient, stream_url: str, position: int, *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Until the stream at ``stream_url`` says its session waits at ``position`` (the replica
    serving it has learnt the queue in front of it); the stream is then left."""
    seen: list[int] = []

    async def told() -> bool:
        transcript = await read_stream(client, stream_url, max_events=1, timeout=timeout)
        events = [i for i in transcript.items if isinstance(i, Event) and i.kind == "queued"]
        seen.extend(e.data["position"] for e in events)
        return bool(events) and events[-1].data["position"] == position

    await until(told, what=f"queue position {position} at {stream_url} (told {seen})", timeout=timeout)
