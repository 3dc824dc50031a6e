"""Streaming from any OpenAI-compatible server with the official SDK.

Used by the worker for every generation, and by the API for ``/test`` and the optional
direct mode. Every failure leaves this module as an ``UpstreamError`` (see ``errors``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai

from mqcommon.errors import map_upstream
from mqcommon.settings import LLMSettings

# The SDK refuses to start without a key; local OpenAI-compatible servers ignore it.
PLACEHOLDER_KEY = "no-key"


def make_client(settings: LLMSettings, *, max_connections: int = 1000) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or PLACEHOLDER_KEY,
        base_url=settings.openai_base_url,
        max_retries=settings.llm_max_retries,
        timeout=httpx.Timeout(settings.llm_timeout_s, connect=settings.llm_connect_timeout_s),
        http_client=httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(settings.llm_timeout_s, connect=settings.llm_connect_timeout_s),
        ),
    )


def build_messages(settings: LLMSettings, message: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    messages.append({"role": "user", "content": message})
    return messages


async def stream_answer(
    client: openai.AsyncOpenAI, settings: LLMSettings, message: str, model: str | None = None
) -> AsyncIterator[str]:
    """Yield the answer's text pieces as the LLM produces them."""
    try:
        kwargs = {"max_tokens": settings.llm_max_tokens} if settings.llm_max_tokens else {}
        stream = await client.chat.completions.create(
            model=model or settings.llm_model,
            messages=build_messages(settings, message),  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices:
                    text = chunk.choices[0].delta.content
                    if text:
                        yield text
    except (openai.OpenAIError, httpx.HTTPError, OSError, TimeoutError) as exc:
        raise map_upstream(exc) from exc


async def check_connection(client: openai.AsyncOpenAI) -> list[str]:
    """List the server's models: proves the URL, the key and the network path."""
    try:
        page = await client.models.list()
        return [model.id for model in page.data]
    except (openai.OpenAIError, httpx.HTTPError, OSError, TimeoutError) as exc:
        raise map_upstream(exc) from exc
