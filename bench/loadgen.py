"""Closed-loop load generator: C users each send a request, read the answer, send the next.

Three clients share one result type:

- ``direct``: ``POST {mock}/v1/chat/completions`` with ``stream: true`` (the baseline; the same
  client reads any OpenAI-compatible server, a proxy in front of the mock or the API's own route);
- ``async``: ``POST {api}/chat/async``, then ``GET {api}/stream/{id}`` (SSE);
- ``sync``: ``POST {api}/chat``, whose body is the answer as ``text/plain``.

Time to first token (TTFT) runs from the moment the request is sent (for ``async``: the POST)
to the first non-empty piece of answer; ``total`` runs to the end of the answer. Every answer
is compared with what the mock said (:func:`llm_stream_mockllm.answer.expected_answer`).
aiohttp and a hand-written SSE parser keep the client cheap: it shares the cores with the
system under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
from llm_stream_mockllm.answer import expected_answer

JSON_HEADERS = {"Content-Type": "application/json"}
SERVED_BY = "X-Served-By"
"""The header a load balancer in front of several API processes names the one that answered."""
ERROR_LINE = "\n[error] "
"""How ``POST /chat`` reports a failure inside its plain-text body."""
DRAIN_TIMEOUT_S = 1.0
SSE_HEADERS = {"Accept": "text/event-stream"}


@dataclass(slots=True)
class Result:
    """One request as the user saw it; times in seconds."""

    ok: bool = False
    """Finished without an error (the answer may still be wrong)."""
    correct: bool = False
    ttft: float | None = None
    total: float | None = None
    post: float | None = None
    """``async`` only: how long the POST took."""
    error: str | None = None
    sent: float | None = None
    """``time.perf_counter()`` when the request was sent (set by :func:`closed_loop`)."""
    post_by: str | None = None
    stream_by: str | None = None
    """Behind a load balancer: its ``X-Served-By`` header on the POST and on the stream
    (``sync``: both are the one request's)."""


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed bytes, get each event's ``data``.

    Handles LF and CRLF line ends, events split across reads, several ``data:`` lines (joined
    by LF) and ignores comments (``: ping``), ``id:``, ``event:`` and ``retry:`` lines.
    """

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        events = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line[:5] == b"data:":
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        return events


class UpstreamError(Exception):
    """The server said the request failed (status, error event, malformed reply)."""


RequestFn = Callable[[aiohttp.ClientSession, str], Awaitable[Result]]


def direct(
    base_url: str, n_tokens: int, model: str = "gpt-4o-mini", headers: dict[str, str] | None = None
) -> RequestFn:
    url = f"{base_url}/v1/chat/completions"
    request_headers = {**JSON_HEADERS, **(headers or {})}

    async def request(session: aiohttp.ClientSession, prompt: str) -> Result:
        body = orjson.dumps(
            {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
        )
        result = Result()
        parts: list[str] = []
        start = time.perf_counter()
        async with session.post(url, data=body, headers=request_headers) as response:
            await _raise_for_status(response)
            parser = SSEParser()
            done = False
            # Read to the end of the body (it ends right after [DONE]) so that the connection
            # goes back to the pool, as an SDK's would.
            async for chunk in response.content.iter_any():
                for data in parser.feed(chunk):
                    if data == b"[DONE]":
                        done = True
                        result.total = time.perf_counter() - start
                        continue
                    choices = orjson.loads(data)["choices"]
                    if choices and (text := choices[0]["delta"].get("content")):
                        if result.ttft is None:
                            result.ttft = time.perf_counter() - start
                        parts.append(text)
        if not done:
            raise UpstreamError("stream ended without [DONE]")
        return finish(result, prompt, n_tokens, parts)

    return request


# Extra headers of a request's POST and of its stream's GET (which replica a balancer sends each to).
Route = Callable[[], tuple[dict[str, str], dict[str, str]]]


def chat_async(base_url: str, n_tokens: int, route: Route | None = None) -> RequestFn:
    url = f"{base_url}/chat/async"

    async def request(session: aiohttp.ClientSession, prompt: str) -> Result:
        result = Result()
        post_headers, read_headers = route() if route is not None else ({}, {})
        start = time.perf_counter()
        body = orjson.dumps({"message": prompt})
        async with session.post(url, data=body, headers={**JSON_HEADERS, **post_headers}) as r:
            result.post_by = r.headers.get(SERVED_BY)
            await _raise_for_status(r)
            queued = orjson.loads(await r.read())
        result.post = time.perf_counter() - start
        parts = await read_stream(session, base_url + queued["stream_url"], result, start, read_headers)
        return finish(result, prompt, n_tokens, parts)

    return request


async def read_stream(
    session: aiohttp.ClientSession, url: str, result: Result, start: float,
    headers: dict[str, str] | None = None,
) -> list[str]:
    """Read ``GET /stream/{id}`` to its ``done`` event; return the answer pieces."""
    parts: list[str] = []
    async with session.get(url, headers={**SSE_HEADERS, **(headers or {})}) as response:
        result.stream_by = response.headers.get(SERVED_BY)
        await _raise_for_status(response)
        parser = SSEParser()
        async for chunk in response.content.iter_any():
            for data in parser.feed(chunk):
                event = orjson.loads(data)
                if "chunk" in event:
                    if result.ttft is None and event["chunk"]:
                        result.ttft = time.perf_counter() - start
                    parts.append(event["chunk"])
                elif event.get("type") == "done":
                    result.total = time.perf_counter() - start
                    # The body ends right after; reading its end lets the connection be reused.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(response.content.read(), DRAIN_TIMEOUT_S)
                    return parts
                elif event.get("type") == "error":
                    raise UpstreamError(f"error event: {str(event.get('error'))[:120]}")
    raise UpstreamError("stream ended without a done event")


def chat_sync(base_url: str, n_tokens: int) -> RequestFn:
    url = f"{base_url}/chat"

    async def request(session: aiohttp.ClientSession, prompt: str) -> Result:
        result = Result()
        body = bytearray()
        start = time.perf_counter()
        async with session.post(url, data=orjson.dumps({"message": prompt}), headers=JSON_HEADERS) as r:
            result.post_by = result.stream_by = r.headers.get(SERVED_BY)
            await _raise_for_status(r)
            async for chunk in r.content.iter_any():
                if chunk:
                    if result.ttft is None:
                        result.ttft = time.perf_counter() - start
                    body += chunk
        result.total = time.perf_counter() - start
        # Decoded once at the end: a multi-byte character may be split across reads.
        text = body.decode("utf-8", "replace")
        if ERROR_LINE in text and text != expected_answer(prompt, n_tokens):
            raise UpstreamError(text[text.index(ERROR_LINE) + 1 :][:120].strip())
        return finish(result, prompt, n_tokens, [text])

    return request


async def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if response.status != 200:
        text = (await response.read())[:200].decode("utf-8", "replace")
        raise UpstreamError(f"HTTP {response.status}: {text}")


def finish(result: Result, prompt: str, n_tokens: int, parts: list[str]) -> Result:
    result.ok = True
    result.correct = "".join(parts) == expected_answer(prompt, n_tokens)
    return result


@dataclass(slots=True)
class Run:
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0


async def closed_loop(
    session: aiohttp.ClientSession,
    request: RequestFn,
    prompts: list[str],
    concurrency: int,
    *,
    request_timeout: float,
    deadline: float,
    ramp: float = 0.0,
    stop: asyncio.Event | None = None,
) -> Run:
    """Send ``prompts`` with ``concurrency`` users; stop taking new ones after ``deadline`` s
    or once ``stop`` is set (the prompts not sent stay ``not sent``).

    User ``k`` starts ``k * ramp / concurrency`` seconds late. With ``ramp`` about one answer
    long, requests arrive evenly instead of in waves of ``concurrency`` at once.
    """
    results: list[Result] = [Result(error="not sent") for _ in prompts]
    pending = iter(range(len(prompts)))
    start = time.perf_counter()

    async def user(k: int) -> None:
        if ramp:
            await asyncio.sleep(k * ramp / concurrency)
        for index in pending:
            sent = time.perf_counter()
            if sent - start > deadline or (stop is not None and stop.is_set()):
                return
            result = await guarded(session, request, prompts[index], request_timeout)
            result.sent = sent
            results[index] = result

    await asyncio.gather(*(user(k) for k in range(concurrency)))
    return Run(results, time.perf_counter() - start)


async def guarded(session: aiohttp.ClientSession, request: RequestFn, prompt: str, timeout: float) -> Result:
    """Run one request; turn every failure into a :class:`Result` with an error kind."""
    try:
        async with asyncio.timeout(timeout):
            return await request(session, prompt)
    except TimeoutError:
        return Result(error="timeout")
    except UpstreamError as exc:
        return Result(error=str(exc))
    except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
        return Result(error=f"{type(exc).__name__}: {str(exc)[:120]}")


def new_session(connections: int) -> aiohttp.ClientSession:
    """One pooled session; idle connections are dropped before a uvicorn server's 5 s."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=3)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
