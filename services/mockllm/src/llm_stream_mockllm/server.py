"""The mock LLM as a raw ASGI application (no framework: it must stay cheap at 10k chunks/s).

Endpoints:

- ``POST /v1/chat/completions`` (also ``/chat/completions``): the OpenAI body. With
  ``"stream": true`` the answer is ``text/event-stream``: headers and a role chunk at once, the
  first token ``ttft`` after the request arrived, then one token every ``1/tps`` seconds, each
  scheduled at an absolute deadline (``arrival + ttft + i/tps``) so timing does not drift; tokens
  that are already due when the loop wakes up late go out in one write. Then a chunk with
  ``finish_reason`` (``"length"`` when ``max_tokens`` cut the answer, else ``"stop"``), a usage
  chunk if ``stream_options.include_usage``, and ``data: [DONE]``. Without ``stream`` the whole
  ``chat.completion`` is sent when the last token would have been, so a non-streamed call
  takes as long as a streamed one.
- ``GET /v1/models``: a few model ids. Any model name is accepted in a chat request.
- ``GET /health``: ``{"status": "ok", ...}`` with the default timing, never authenticated.
- Anything else: 404 (405 for a known path with the wrong method) in OpenAI error format.

With ``MOCK_API_KEY`` set, ``/v1/*`` requires ``Authorization: Bearer <key>`` (else 401).
Per-request behaviour (failures, timing, length) comes from ``[[mock:...]]`` directives in the
prompt: see :mod:`llm_stream_mockllm.directives`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from llm_stream_mockllm import wire
from llm_stream_mockllm.answer import answer_tokens, choice_prompt
from llm_stream_mockllm.request import BadRequest, ChatRequest, parse_chat_request
from llm_stream_mockllm.settings import Settings
from llm_stream_mockllm.typed import Plan, plan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_IDS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "mock-echo")
MAX_BODY_BYTES = 16 * 1024 * 1024
_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_ABORT_LOG = "ASGI callable returned without completing response."


class BodyTooLarge(BadRequest):
    """The request body exceeds :data:`MAX_BODY_BYTES` (answered with a 413)."""


class MockLLM:
    """ASGI application; one instance per server, holding the ``fail_times`` counters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ids = itertools.count(1)
        self._failures: dict[str, int] = {}
        self._authorization = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self._started = int(time.time())
        # What tests and the benchmark read back from GET /debug/streams: the prompts of the
        # latest requests, and when (wall clock) clients closed streams before their end.
        self._streams = 0
        self._requested: collections.deque[str] = collections.deque(maxlen=10_000)
        self._closed_early: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self._parameters: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                await _error(send, 405, f"Invalid method for URL ({method} {path})")
            elif self._authorised(scope):
                await self._chat(receive, send)
            else:
                await _error(send, 401, "Incorrect API key provided.")
        elif path in ("/v1/models", "/models"):
            if method != "GET":
                await _error(send, 405, f"Invalid method for URL ({method} {path})")
            elif self._authorised(scope):
                await _json(send, 200, wire.model_list(MODEL_IDS, self._started))
            else:
                await _error(send, 401, "Incorrect API key provided.")
        elif path == "/debug/streams" and method == "GET":
            report = {
                "streams": self._streams, "requested": list(self._requested),
                "closed_early": list(self._closed_early), "parameters": list(self._parameters),
            }
            await _json(send, 200, orjson.dumps(report))
        elif path == "/health":
            s = self.settings
            health = {"status": "ok", "ttft_ms": s.ttft_ms, "tokens": s.tokens, "tps": s.tps}
            await _json(send, 200, orjson.dumps(health))
        else:
            await _error(send, 404, f"Invalid URL ({method} {path})")

    def _authorised(self, scope: Scope) -> bool:
        if self._authorization is None:
            return True
        return any(
            name == b"authorization" and value == self._authorization for name, value in scope["headers"]
        )

    async def _chat(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        try:
            body = await _read_body(receive)
            if body is None:
                return
            request = parse_chat_request(body)
        except BadRequest as exc:
            status = 413 if isinstance(exc, BodyTooLarge) else 400
            await _error(send, status, str(exc), param=exc.param)
            return

        self._requested.append(request.prompt)
        self._parameters.append(
            {"prompt": request.prompt, "model": request.model, "roles": request.roles, **request.sampling}
        )
        d, s = request.directives, self.settings
        if d.fail is not None and self._should_fail(request.prompt, d.fail_times):
            headers = []
            if d.retry_after_ms is not None:
                headers.append((b"retry-after-ms", str(d.retry_after_ms).encode()))
                headers.append((b"retry-after", str(math.ceil(d.retry_after_ms / 1000)).encode()))
            message = f"Mock failure {d.fail} requested by [[mock:fail={d.fail}]]."
            await _error(send, d.fail, message, headers=headers)
            return

        requested = d.tokens if d.tokens is not None else s.tokens
        count = requested if request.max_tokens is None else min(requested, request.max_tokens)
        ttft_ms = d.ttft_ms if d.ttft_ms is not None else s.ttft_ms
        schedule = _Schedule(arrival + ttft_ms / 1000, 1 / (d.tps if d.tps is not None else s.tps))
        tokens = answer_tokens(request.prompt, count)
        finish = "length" if count < requested else "stop"
        number = next(self._ids)
        typed = plan(prompt=request.prompt, tokens=tokens, data=request.data, wanted_tools=d.tool,
                     reasoning=d.reasoning or 0)
        if typed is not None:
            if typed.finish == "stop":
                typed.finish = finish
            if request.stream:
                deltas = typed.deltas
                await self._stream(
                    receive, send, request, len(deltas),
                    lambda encoder, a, b: b"".join([encoder.delta(*delta) for delta in deltas[a:b]]),
                    typed.finish, schedule, number,
                )
            else:
                await self._typed(send, request, typed, schedule, number)
        elif request.choices > 1:
            answers = [tokens] + [
                answer_tokens(choice_prompt(request.prompt, i), count) for i in range(1, request.choices)
            ]
            if request.stream:
                await self._stream(
                    receive, send, request, len(tokens),
                    lambda encoder, a, b: b"".join(
                        encoder.choice_content(i, answer[k])
                        for k in range(a, b) for i, answer in enumerate(answers)
                    ),
                    finish, schedule, number, choices=request.choices,
                )
            else:
                await self._complete(send, request, tokens, finish, schedule, number, answers)
        elif request.stream:
            await self._stream(
                receive, send, request, len(tokens),
                lambda encoder, a, b: b"".join([encoder.content(token) for token in tokens[a:b]]),
                finish, schedule, number,
            )
        else:
            await self._complete(send, request, tokens, finish, schedule, number)

    def _should_fail(self, prompt: str, times: int | None) -> bool:
        if times is None:
            return True
        failed = self._failures.get(prompt, 0)
        if failed >= times:
            return False
        self._failures[prompt] = failed + 1
        return True

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        request: ChatRequest,
        units: int,
        encode: Callable[[wire.ChunkEncoder, int, int], bytes],
        finish: str,
        schedule: _Schedule,
        number: int,
        choices: int = 1,
    ) -> None:
        """Stream ``units`` chunks at the schedule's pace; ``encode`` makes chunks a to b."""
        loop = asyncio.get_running_loop()
        encoder = wire.ChunkEncoder(
            f"chatcmpl-mock{number:08d}",
            int(time.time()),
            request.model,
            include_usage=request.include_usage,
        )
        self._streams += 1
        headers = [*_SSE, (b"x-request-id", b"req_mock%08d" % number)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": encoder.role(), "more_body": True})

        abort_after = request.directives.fail_after
        count = units if abort_after is None else min(abort_after, units)
        gone = loop.create_task(_disconnected(receive))
        done = False

        def closed(task: asyncio.Task[None]) -> None:
            if not done and not task.cancelled():
                self._closed_early.append({"at": time.time(), "prompt": request.prompt})

        gone.add_done_callback(closed)
        try:
            sent = 0
            while sent < count:
                delay = schedule.deadline(sent) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if gone.done():
                    return
                due = min(count, max(sent + 1, schedule.due(loop.time())))
                body = encode(encoder, sent, due)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                sent = due
            if abort_after is not None:
                _abort()
                return
            tail = b"".join(encoder.finish(finish, index) for index in range(choices))
            if request.include_usage:
                tail += encoder.usage(request.prompt_tokens, units * choices)
            done = True
            await send({"type": "http.response.body", "body": tail + wire.DONE})
        finally:
            done = done or not gone.done()
            gone.cancel()

    async def _typed(
        self, send: Send, request: ChatRequest, typed: Plan, schedule: _Schedule, number: int
    ) -> None:
        """A whole answer with tool calls, a structured output, reasoning or log probabilities."""
        loop = asyncio.get_running_loop()
        count = len(typed.deltas)
        delay = schedule.deadline(max(count - 1, 0)) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await _json(send, 200, wire.typed_completion(
            f"chatcmpl-mock{number:08d}", int(time.time()), request.model, typed.message(),
            typed.logprobs, typed.finish, request.prompt_tokens, count,
        ))

    async def _complete(
        self,
        send: Send,
        request: ChatRequest,
        tokens: list[str],
        finish: str,
        schedule: _Schedule,
        number: int,
        answers: list[list[str]] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        abort_after = request.directives.fail_after
        last = len(tokens) if abort_after is None else min(abort_after, len(tokens))
        delay = schedule.deadline(max(last - 1, 0)) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        body = wire.completion(
            f"chatcmpl-mock{number:08d}",
            int(time.time()),
            request.model,
            ["".join(answer) for answer in answers] if answers else "".join(tokens),
            finish,
            request.prompt_tokens,
            len(tokens) * (len(answers) if answers else 1),
        )
        if abort_after is None:
            await _json(send, 200, body)
            return
        # Promise the whole body, send half of it, and hang up.
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        _abort()


class _Schedule:
    """Absolute deadlines of the tokens of one answer (event-loop clock)."""

    __slots__ = ("first", "interval")

    def __init__(self, first: float, interval: float) -> None:
        self.first = first
        self.interval = interval

    def deadline(self, index: int) -> float:
        return self.first + index * self.interval

    def due(self, now: float) -> int:
        """How many tokens are due at ``now``."""
        if now < self.first:
            return 0
        return int((now - self.first) / self.interval) + 1


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None if the client went away before sending it all."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"Request body larger than {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    """Return once the client has closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    all_headers = [_JSON, (b"content-length", str(len(body)).encode()), *(headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send,
    status: int,
    message: str,
    *,
    param: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await _json(send, status, wire.error_body(status, message, param=param), headers)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _QuietAbort(logging.Filter):
    """Drop uvicorn's error line for a response the mock cut short on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _ABORT_LOG


_quiet_abort = _QuietAbort()


def _abort() -> None:
    """Prepare to return from the app mid-response: uvicorn then closes the connection.

    That is how an ASGI app hangs up on a client; uvicorn reports it as an error, which for
    ``[[mock:fail_after=K]]`` is the intended behaviour, so that one line is filtered out.
    """
    logger = logging.getLogger("uvicorn.error")
    if _quiet_abort not in logger.filters:
        logger.addFilter(_quiet_abort)
