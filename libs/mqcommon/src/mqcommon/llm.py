"""Streaming from any OpenAI-compatible server with the official SDK.

Used by the worker for every generation, and by the API for ``/test`` and the optional
direct mode. Every failure leaves this module as an ``UpstreamError`` (see ``errors``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

from mqcommon.errors import RetryableUpstreamError, map_upstream
from mqcommon.schemas import ChatTask
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


def build_messages(
    settings: LLMSettings, message: str | None, messages: list[dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """The conversation to send: ``messages`` as given, or ``message`` as one user turn.

    The deployment's system prompt goes first when the conversation has no system message.
    """
    turns = list(messages) if messages else [{"role": "user", "content": message or ""}]
    if settings.system_prompt and not any(turn.get("role") == "system" for turn in turns):
        turns.insert(0, {"role": "system", "content": settings.system_prompt})
    return turns


# Generation parameters passed through to the LLM when they are set.
PARAMETERS = ("temperature", "top_p", "stop", "seed", "user")


def request_arguments(settings: LLMSettings, params: dict[str, Any] | None, *, usage: bool) -> dict[str, Any]:
    """The optional arguments of one chat completion request."""
    params = params or {}
    out: dict[str, Any] = {name: params[name] for name in PARAMETERS if params.get(name) is not None}
    if isinstance(out.get("stop"), tuple):
        out["stop"] = list(out["stop"])
    cap, wanted = settings.llm_max_tokens, params.get("max_tokens")
    limit = min(cap, wanted) if cap and wanted else (cap or wanted)
    if limit:
        out["max_tokens"] = limit
    if usage:
        out["stream_options"] = {"include_usage": True}
    return out


async def stream_answer(
    client: openai.AsyncOpenAI,
    settings: LLMSettings,
    message: str | None,
    model: str | None = None,
    *,
    messages: list[dict[str, str]] | None = None,
    params: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Yield the answer's text pieces as the LLM produces them.

    ``messages`` (a conversation) replaces ``message`` (one user turn); ``params`` are the
    generation parameters (temperature, top_p, max_tokens, stop, seed, user; ``LLM_MAX_TOKENS``
    caps max_tokens). When ``usage`` is a dict, the LLM is asked for its token usage and the
    dict is filled with it once the stream ends.

    The SDK makes the request (auth, base URL, retries before the first byte, error types);
    the server-sent lines of the body are decoded here with orjson, which costs a fraction
    of building the SDK's typed chunk objects for every token.
    """
    kwargs = request_arguments(settings, params, usage=usage is not None)
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=model or settings.llm_model,
            messages=build_messages(settings, message, messages),  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        ) as response:
            async for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = orjson.loads(data)
                if usage is not None and isinstance(chunk.get("usage"), dict):
                    usage.update(chunk["usage"])
                text = _delta_text(chunk)
                if text:
                    yield text
    except orjson.JSONDecodeError as exc:
        raise RetryableUpstreamError(f"malformed stream chunk: {exc}") from exc
    except TRANSPORT_ERRORS as exc:
        raise map_upstream(exc) from exc


async def stream_task(
    client: openai.AsyncOpenAI, settings: LLMSettings, task: ChatTask, usage: dict[str, Any] | None = None
) -> AsyncIterator[str]:
    """``stream_answer`` for a queued task: its conversation and parameters."""
    params = {
        "temperature": task.temperature, "top_p": task.top_p, "max_tokens": task.max_tokens,
        "stop": task.stop, "seed": task.seed, "user": task.user,
    }
    async for text in stream_answer(
        client, settings, task.message, task.model,
        messages=task.conversation() if task.messages else None, params=params,
        usage=usage if task.include_usage else None,
    ):
        yield text


def _delta_text(chunk: dict[str, Any]) -> str | None:
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
