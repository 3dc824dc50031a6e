"""An LLM's server-sent body is split into lines wherever its packets end, through the SDK's
aiohttp transport (read from aiohttp itself) and through any other transport (httpx)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import AsyncIterator

import aiohttp.web
import httpx2
import openai
import orjson
import pytest
from mqcommon.llm import make_client, stream_parts
from mqcommon.parts import CONTENT
from mqcommon.settings import LLMSettings


def chunk(text: str) -> bytes:
    return orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})


WORDS = ["Hel", "lo, ", "wor", "ld"]
BODY = b"".join(b"data: " + chunk(w) + b"\r\n\r\n" for w in WORDS) + b"data: [DONE]\n\n"
# Cut inside a JSON object, between CR and LF, right after "data:", and one byte at a time.
CUTS = [5, 17, 40, 41, 42, len(BODY) // 2, len(BODY) // 2 + 1, len(BODY) - 3]


def pieces(body: bytes) -> list[bytes]:
    bounds = [0, *sorted(c for c in CUTS if 0 < c < len(body)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


async def text_of(client: openai.AsyncOpenAI, settings: LLMSettings) -> str:
    out = []
    async for parts in stream_parts(client, settings, "hi"):
        out.extend(text for key, text in parts if key == CONTENT)
    return "".join(out)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
async def test_the_sdk_aiohttp_transport_body_is_split_at_line_ends_whatever_its_packets(
    compressed: bool,
) -> None:
    # A compressed body is not read from aiohttp (the SDK's transport leaves it encoded).
    body = gzip.compress(BODY) if compressed else BODY

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        headers = {"Content-Type": "text/event-stream"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        response = aiohttp.web.StreamResponse(headers=headers)
        await response.prepare(request)
        for piece in pieces(body):
            await response.write(piece)
            await asyncio.sleep(0.005)  # separate packets, as an LLM sends its tokens
        return response

    app = aiohttp.web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = LLMSettings(openai_base_url=f"http://127.0.0.1:{port}/v1", llm_model="m")
    client = make_client(settings)
    try:
        assert await text_of(client, settings) == "Hello, world"
    finally:
        await client.close()
        await runner.cleanup()


async def text_through(transport: httpx2.AsyncBaseTransport) -> str:
    """The answer's text read by the SDK over ``transport`` (not the aiohttp one)."""
    settings = LLMSettings(openai_base_url="http://llm.test/v1", llm_model="m")
    client = openai.AsyncOpenAI(
        api_key="k", base_url=settings.openai_base_url, http_client=httpx2.AsyncClient(transport=transport)
    )
    try:
        return await text_of(client, settings)
    finally:
        await client.close()


class Pieces(httpx2.AsyncByteStream):
    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
async def test_another_transport_or_a_compressed_body_is_read_through_httpx(compressed: bool) -> None:
    body = gzip.compress(BODY) if compressed else BODY

    def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"Content-Type": "text/event-stream"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        return httpx2.Response(200, headers=headers, stream=Pieces(pieces(body)))

    assert await text_through(httpx2.MockTransport(answer)) == "Hello, world"


async def test_a_last_line_without_its_end_is_still_read() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=Pieces([b"data: " + chunk("a") + b"\n\ndata: ", chunk("b")]))

    assert await text_through(httpx2.MockTransport(answer)) == "ab"
