"""``POST /v1/chat/completions``: OpenAI's Chat Completions, through the queue and the workers.

A request becomes a task like any other (``SessionService.enqueue``); the answer is followed
like any other.
Streamed, it is ``chat.completion.chunk`` events and ``data: [DONE]``; a client that goes away
before the end cancels the generation. Not streamed, the completion is sent whole at the end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from mqcommon.tracing import TRACEPARENT_HEADER
from sse_starlette import EventSourceResponse

from llm_stream_api.deps import KeyDep, SessionsDep, SettingsDep
from llm_stream_api.dialects import OpenAIRoute
from llm_stream_api.dialects.openai import end_error
from llm_stream_api.openapi.responses import ANSWER_ERRORS, BODY_ERRORS
from llm_stream_api.protocol import chat_completions as protocol
from llm_stream_api.protocol.native import inline_schema
from llm_stream_api.quota import input_limits
from llm_stream_api.routes import STREAM_HEADERS
from llm_stream_api.routes.bodies import read_openai_body
from llm_stream_api.service.sessions import SessionService
from llm_stream_api.service.streams import StreamMeter
from llm_stream_api.sessions.hub import DONE

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)


BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(protocol.ChatCompletionRequest)}
}}}


@router.post(
    "/chat/completions", response_model=None, summary="OpenAI Chat Completions, through the queue",
    openapi_extra=BODY,
    responses={**protocol.RESPONSES, **BODY_ERRORS, **ANSWER_ERRORS},
)
async def chat_completions(
    request: Request, settings: SettingsDep, sessions: SessionsDep, key: KeyDep
) -> JSONResponse | EventSourceResponse:
    body = await read_openai_body(request, settings, protocol.ChatCompletionRequest)
    wanted = body.task_request()
    input_limits.check(wanted, settings, body.limit_names)
    # The one not used (max_completion_tokens wins) is held to the ceiling too.
    input_limits.check_tokens(body.max_tokens, settings, "max_tokens")
    if body.stream:
        sessions.check_streams()
    requested_at = time.time()
    task, _ = await sessions.enqueue(wanted, owner=key, traceparent=request.headers.get(TRACEPARENT_HEADER))
    headers = {"X-Session-ID": task.session_id, "X-Request-ID": task.session_id}
    if body.stream:
        writer = protocol.ChunkWriter(
            task.session_id, body.model, include_usage=body.include_usage, max_tokens=wanted.max_tokens,
            choices=wanted.n or 1,
        )
        return EventSourceResponse(
            _chunks(sessions, task.session_id, writer, requested_at),
            ping=settings.sse_ping_s, headers={**headers, **STREAM_HEADERS},
        )
    answer = await sessions.answer(task.session_id)
    if answer.kind != DONE:
        session = sessions.get(task.session_id)
        raise end_error(answer.kind, answer.error, session.error_param if session else None)
    session = sessions.get(task.session_id)
    return JSONResponse(
        protocol.completion(
            task.session_id, body.model, int(requested_at), answer.text, session.usage if session else None,
            wanted.max_tokens, session.parts() if session else None, session.finish if session else None,
            choices=wanted.n or 1,
        ),
        headers=headers,
    )


async def _chunks(
    sessions: SessionService, session_id: str, writer: protocol.ChunkWriter, requested_at: float,
) -> AsyncIterator[bytes]:
    """The answer as chunks; the generation is cancelled if the client leaves before the end."""
    meter = StreamMeter("openai", requested_at, sessions.streams)
    ended = False
    try:
        yield writer.role()
        async for piece in sessions.follow(session_id):
            if piece.kind is None:
                data = writer.content(piece.text) if piece.parts is None else writer.parts(piece.parts)
            elif piece.kind == DONE:
                ended = True
                session = sessions.get(session_id)
                data = writer.finish(session.usage if session else None, session.finish if session else None)
            else:
                ended = True
                session = sessions.get(session_id)
                param = session.error_param if session else None
                data = writer.error(end_error(piece.kind, piece.error, param))
            meter.sent(piece, len(data))
            yield data
    finally:
        if not ended:
            sessions.cancel_soon(session_id)
        meter.close(sessions.get(session_id), session_id)
