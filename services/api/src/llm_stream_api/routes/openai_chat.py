"""``POST /v1/chat/completions``: OpenAI's Chat Completions, through the queue and the workers.

A request becomes a task like any other (``tasks.enqueue``); the answer is read from the hub.
Streamed, it is ``chat.completion.chunk`` events and ``data: [DONE]``; a client that goes away
before the end cancels the generation. Not streamed, the completion is sent whole at the end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from llm_stream_api import admission, limits, openai_errors
from llm_stream_api.broker import Broker
from llm_stream_api.deps import BrokerDep, HubDep, SettingsDep
from llm_stream_api.hub import DONE, SessionHub
from llm_stream_api.models import inline_schema
from llm_stream_api.openai_errors import end_error
from llm_stream_api.protocol import chat_completions as protocol
from llm_stream_api.routes.openai_common import answer, read_body
from llm_stream_api.settings import APISettings
from llm_stream_api.streaming import StreamMeter, follow
from llm_stream_api.tasks import enqueue

router = APIRouter(prefix="/v1")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(protocol.ChatCompletionRequest)}
}}}


@router.post(
    "/chat/completions", response_model=None, summary="OpenAI Chat Completions, through the queue",
    openapi_extra=BODY,
    responses={**protocol.RESPONSES, **openai_errors.BODY_ERRORS, **openai_errors.ANSWER_ERRORS},
)
async def chat_completions(
    request: Request, settings: SettingsDep, broker: BrokerDep, hub: HubDep
) -> JSONResponse | EventSourceResponse:
    body = await read_body(request, settings, protocol.ChatCompletionRequest)
    wanted = body.task_request()
    limits.check(wanted, settings, body.limit_names)
    # The one not used (max_completion_tokens wins) is held to the ceiling too.
    limits.check_tokens(body.max_tokens, settings, "max_tokens")
    if body.stream:
        admission.check_streams(settings)
    requested_at = time.time()
    task, _ = await enqueue(wanted, request, broker, hub)
    headers = {"X-Session-ID": task.session_id, "X-Request-ID": task.session_id}
    if body.stream:
        writer = protocol.ChunkWriter(
            task.session_id, body.model, include_usage=body.include_usage, max_tokens=wanted.max_tokens
        )
        return EventSourceResponse(
            _chunks(hub, task.session_id, settings, broker, writer, requested_at),
            ping=settings.sse_ping_s, headers={**headers, **STREAM_HEADERS},
        )
    text, kind, error = await answer(hub, task.session_id, settings, broker)
    if kind != DONE:
        raise end_error(kind, error)
    session = hub.get(task.session_id)
    return JSONResponse(
        protocol.completion(task.session_id, body.model, int(requested_at), text,
                            session.usage if session else None, wanted.max_tokens),
        headers=headers,
    )


async def _chunks(
    hub: SessionHub, session_id: str, settings: APISettings, broker: Broker,
    writer: protocol.ChunkWriter, requested_at: float,
) -> AsyncIterator[bytes]:
    """The answer as chunks; the generation is cancelled if the client leaves before the end."""
    meter = StreamMeter("openai", requested_at)
    ended = False
    try:
        yield writer.role()
        async for piece in follow(hub, session_id, 0, settings, broker.discover):
            if piece.kind is None:
                data = writer.content(piece.text)
            elif piece.kind == DONE:
                ended = True
                session = hub.get(session_id)
                data = writer.finish(session.usage if session else None)
            else:
                ended = True
                data = writer.error(end_error(piece.kind, piece.error))
            meter.sent(piece, len(data))
            yield data
    finally:
        if not ended:
            broker.cancel_soon(session_id)
        meter.close(hub.get(session_id), session_id)
