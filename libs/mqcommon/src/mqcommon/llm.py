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
from mqcommon.parts import CONTENT, FINISH, LOGPROBS, REASONING, REFUSAL, Part, choice_key, tool_key
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
    settings: LLMSettings, message: str | None, messages: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The conversation to send: ``messages`` as given, or ``message`` as one user turn.

    The deployment's system prompt goes first when the conversation has no system message.
    """
    turns = list(messages) if messages else [{"role": "user", "content": message or ""}]
    if settings.system_prompt and not any(turn.get("role") == "system" for turn in turns):
        turns.insert(0, {"role": "system", "content": settings.system_prompt})
    return turns


def request_arguments(settings: LLMSettings, params: dict[str, Any] | None, *, usage: bool) -> dict[str, Any]:
    """The optional arguments of one chat completion request: ``params`` (a task's
    ``parameters()``) as given, ``max_tokens`` capped by ``LLM_MAX_TOKENS``."""
    out = {name: value for name, value in (params or {}).items() if value is not None}
    if isinstance(out.get("stop"), tuple):
        out["stop"] = list(out["stop"])
    cap, wanted = settings.llm_max_tokens, out.pop("max_tokens", None)
    limit = min(cap, wanted) if cap and wanted else (cap or wanted)
    if limit:
        out["max_tokens"] = limit
    if usage:
        out["stream_options"] = {"include_usage": True}
    return out


class Outcome:
    """What a stream told besides its parts: the token usage and the finish reason."""

    __slots__ = ("finish", "usage")

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None


async def stream_parts(
    client: openai.AsyncOpenAI,
    settings: LLMSettings,
    message: str | None,
    model: str | None = None,
    *,
    messages: list[dict[str, Any]] | None = None,
    params: dict[str, Any] | None = None,
    outcome: Outcome | None = None,
    usage: bool = False,
    several: bool = False,
) -> AsyncIterator[list[Part]]:
    """Yield the parts of each chunk of the answer as the LLM produces them.

    ``messages`` (a conversation) replaces ``message`` (one user turn); ``params`` are the
    generation parameters, passed as given (``LLM_MAX_TOKENS`` caps max_tokens). With
    ``usage`` the LLM is asked for its token usage; ``outcome`` gets it and the finish reason.
    With ``several`` (the request asked for ``n`` choices) each choice keeps its index;
    otherwise every delta is choice 0's, whatever index a server puts on it.

    The SDK makes the request (auth, base URL, retries before the first byte, error types);
    the server-sent lines of the body are split and decoded here (``_lines``, orjson), which
    costs a fraction of building the SDK's typed chunk objects for every token.
    """
    kwargs = request_arguments(settings, params, usage=usage)
    calls = _ToolCalls()
    try:
        async with client.chat.completions.with_streaming_response.create(
            model=model or settings.llm_model,
            messages=build_messages(settings, message, messages),  # type: ignore[arg-type]
            stream=True,
            **kwargs,
        ) as response:
            async for line in _lines(response.http_response):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                chunk = orjson.loads(data)
                if outcome is not None and isinstance(chunk.get("usage"), dict):
                    outcome.usage = chunk["usage"]
                parts = _delta_parts(chunk, calls, outcome, several)
                if parts:
                    yield parts
    except orjson.JSONDecodeError as exc:
        raise RetryableUpstreamError(f"malformed stream chunk: {exc}") from exc
    except TRANSPORT_ERRORS as exc:
        raise map_upstream(exc) from exc


async def stream_answer(
    client: openai.AsyncOpenAI,
    settings: LLMSettings,
    message: str | None,
    model: str | None = None,
    *,
    messages: list[dict[str, Any]] | None = None,
    params: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """The answer's text alone, as the LLM produces it (``/test`` and direct mode)."""
    async for parts in stream_parts(client, settings, message, model, messages=messages, params=params):
        for key, text in parts:
            if key == CONTENT:
                yield text


async def _lines(http_response: httpx2.Response) -> AsyncIterator[bytes]:
    """The lines of a server-sent body as they arrive, with their line ends.

    An LLM sends each token in a packet of its own, so every layer a chunk passes through
    costs once per token: a body the SDK's aiohttp transport carries unencoded is read from
    aiohttp itself; any other (another transport, a compressed body) through httpx."""
    pending = b""
    async for chunk in _body(http_response):
        if pending:
            chunk = pending + chunk
        lines = chunk.splitlines(keepends=True)
        # A line cut by the packet boundary waits for its end. (A CR LF cut between its two
        # bytes reads as an empty line more, which ends no data line early.)
        pending = b"" if not lines or lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        for line in lines:
            yield line
    if pending:
        yield pending


def _body(http_response: httpx2.Response) -> AsyncIterator[bytes]:
    # The SDK's aiohttp transport keeps its aiohttp response inside the httpx stream, and
    # leaves the body encoded (auto_decompress off). Any other shape goes through httpx.
    inner = getattr(getattr(http_response.stream, "_stream", None), "_aiohttp_response", None)
    encoding = http_response.headers.get("content-encoding", "identity").strip().lower()
    if isinstance(inner, aiohttp.ClientResponse) and encoding in ("", "identity"):
        return inner.content.iter_any()
    return http_response.aiter_bytes()


def stream_task(
    client: openai.AsyncOpenAI, settings: LLMSettings, task: ChatTask, outcome: Outcome | None = None
) -> AsyncIterator[list[Part]]:
    """``stream_parts`` for a queued task: its conversation and parameters."""
    return stream_parts(
        client, settings, task.message, task.model,
        messages=task.conversation() if task.messages else None, params=task.parameters(),
        outcome=outcome, usage=bool(task.include_usage), several=task.n is not None,
    )


class _ToolCalls:
    """Ids and names already seen per tool call: some servers repeat them in every delta,
    and a client concatenates what it is sent."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def once(self, key: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value or self.seen.get(key) == value:
            return None
        self.seen[key] = value
        return value


def _delta_parts(
    chunk: dict[str, Any], calls: _ToolCalls, outcome: Outcome | None, several: bool = False
) -> list[Part]:
    if "error" in chunk:
        detail = chunk["error"]
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        raise RetryableUpstreamError(f"error in stream: {message}")
    choices = chunk.get("choices")
    if not choices:
        return []
    if len(choices) == 1:
        choice = choices[0]
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if (len(delta) == 1 and content is not None and not choice.get("logprobs")
                and not choice.get("index") and not choice.get("finish_reason")):  # nearly every chunk
            return [(CONTENT, content)] if isinstance(content, str) and content else []
    parts: list[Part] = []
    for choice in choices:
        index = choice.get("index", 0) if several else 0
        _choice_parts(choice, index if isinstance(index, int) and index >= 0 else 0, calls, outcome, parts)
    return parts


def _choice_parts(
    choice: dict[str, Any], index: int, calls: _ToolCalls, outcome: Outcome | None, parts: list[Part]
) -> None:
    """The parts of one choice's delta (choices above 0 under their own keys)."""
    def key(name: str) -> str:
        return choice_key(index, name)

    finish = choice.get("finish_reason")
    if isinstance(finish, str) and finish:
        if index == 0:
            if outcome is not None:
                outcome.finish = finish
        else:
            parts.append((key(FINISH), finish))
    delta = choice.get("delta") or {}
    # vLLM and others send reasoning as reasoning_content (newer vLLM: reasoning).
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append((key(REASONING), reasoning))
    content = delta.get("content")
    if isinstance(content, str) and content:
        parts.append((key(CONTENT), content))
    refusal = delta.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append((key(REFUSAL), refusal))
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        number = call.get("index", 0)
        number = number if isinstance(number, int) and number >= 0 else 0
        function = call.get("function") or {}
        for field, value in (("id", call.get("id")), ("name", function.get("name"))):
            if (once := calls.once(key(tool_key(number, field)), value)) is not None:
                parts.append((key(tool_key(number, field)), once))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            parts.append((key(tool_key(number, "args")), arguments))
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if isinstance(entries, list) and entries:
        parts.append((key(LOGPROBS), "".join(orjson.dumps(entry).decode() + "\n" for entry in entries)))


async def check_connection(client: openai.AsyncOpenAI) -> list[str]:
    """List the server's models: proves the URL, the key and the network path."""
    try:
        page = await client.models.list()
        return [model.id for model in page.data]
    except TRANSPORT_ERRORS as exc:
        raise map_upstream(exc) from exc
