"""Streaming from any OpenAI-compatible server with the official SDK.

Used by the worker for every generation, and by the API for ``/test`` and the optional
direct mode. Every failure leaves this module as an ``UpstreamError`` (see ``errors``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx2
import openai
import orjson

from mqcommon.errors import RetryableUpstreamError, map_upstream
from mqcommon.settings import LLMSettings

# The SDK refuses to start without a key; local OpenAI-compatible servers ignore it.
PLACEHOLDER_KEY = "no-key"

# What can escape the SDK while a response body is being read.
TRANSPORT_ERRORS = (openai.OpenAIError, httpx2.HTTPError, aiohttp.ClientError, OSError, TimeoutError)


def make_client(settings: LLMSettings, *, max_connections: int = 1000) -> openai.AsyncOpenAI:
    timeout = httpx2.Timeout(settings.llm_timeout_s, connect=settings.llm_connect_timeout_s)
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or PLACEHOLDER_KEY,
        base_url=settings.openai_base_url,
        max_retries=settings.llm_max_retries,
        timeout=timeout,
        # aiohttp's pool stays cheap with hundreds of concurrent streams; httpcore's default
        # pool rescans every connection on each request.
        http_client=openai.DefaultAioHttpClient(
            timeout=timeout,
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        ),
    )


def build_messages(settings: LLMSettings, message: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages.append({"role": "user", "content": message})
    return messages


async def stream_answer(
    client: openai.AsyncOpenAI, settings: LLMSettings, message: str, model: str | None = None
) -> AsyncIterator[str]:
    """Yield the answer's text pieces as the LLM produces them.

    The SDK makes the request (auth, base URL, retries before the first byte, error types);
    the server-sent lines of the body are decoded here with orjson, which costs a fraction
    of building the SDK's typed chunk objects for every token.
    """
    kwargs = {"max_tokens": settings.llm_max_tokens} if settings.llm_max_tokens else {}
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=model or settings.llm_model,
            messages=build_messages(settings, message),  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        ) as response:
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                text = _delta_text(orjson.loads(data))
                if text:
                    yield text
    except orjson.JSONDecodeError as exc:
        raise RetryableUpstreamError(f"malformed stream chunk: {exc}") from exc
    except TRANSPORT_ERRORS as exc:
        raise map_upstream(exc) from exc


def _delta_text(chunk: dict) -> str | None:
    if "error" in chunk:
        detail = chunk["error"]
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        raise RetryableUpstreamError(f"error in stream: {message}")
    choices = chunk.get("choices")
    if not choices:
        return None
    return (choices[0].get("delta") or {}).get("content")


async def check_connection(client: openai.AsyncOpenAI) -> list[str]:
    """List the server's models: proves the URL, the key and the network path."""
    try:
        page = await client.models.list()
        return [model.id for model in page.data]
    except TRANSPORT_ERRORS as exc:
        raise map_upstream(exc) from exc
