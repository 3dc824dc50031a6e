"""The native chat routes: queue a request, stream its answer (SSE or plain text)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from mqcommon.errors import UpstreamError
from mqcommon.schemas import SESSION_ID_PATTERN, new_id
from mqcommon.tracing import TRACEPARENT_HEADER, trace_id_of
from sse_starlette import EventSourceResponse

from llm_stream_api.deps import KeyDep, SessionsDep, SettingsDep, StateDep
from llm_stream_api.dialects import NativeRoute
from llm_stream_api.openapi.responses import CHAT_ASYNC_RESPONSES, CHAT_TEXT_RESPONSES, STREAM_RESPONSES
from llm_stream_api.protocol.errors import APIError, NotFound
from llm_stream_api.protocol.native import ChatRequest, Queued, inline_schema
from llm_stream_api.protocol.task import appended_turns, from_native
from llm_stream_api.quota import input_limits
from llm_stream_api.routes import STREAM_HEADERS
from llm_stream_api.routes.bodies import read_chat_request
from llm_stream_api.settings import APISettings

router = APIRouter(route_class=NativeRoute)


def _session_headers(session_id: str, traceparent: str) -> dict[str, str]:
    return {"X-Session-ID": session_id, "X-Trace-ID": trace_id_of(traceparent) or ""}


CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_schema(ChatRequest)}},
    }
}


@router.post(
    "/chat/async", response_model=Queued, summary="Queue a chat request", openapi_extra=CHAT_BODY,
    responses=CHAT_ASYNC_RESPONSES,
)
async def chat_async(
    request: Request, response: Response, settings: SettingsDep, sessions: SessionsDep, key: KeyDep
) -> Queued:
    body = await read_chat_request(request, settings)
    wanted = from_native(body)
    input_limits.check(wanted, settings, appended=appended_turns(body, wanted))
    task, traceparent = await sessions.enqueue(
        wanted, owner=key, traceparent=request.headers.get(TRACEPARENT_HEADER), reader_here=False
    )
    response.headers.update(_session_headers(task.session_id, traceparent))
    return Queued(session_id=task.session_id, stream_url=f"/stream/{task.session_id}")


@router.post(
    "/chat", summary="Ask and stream the answer as plain text", openapi_extra=CHAT_BODY,
    response_class=PlainTextResponse, responses=CHAT_TEXT_RESPONSES,
)
async def chat(request: Request, state: StateDep, key: KeyDep) -> StreamingResponse:
    settings, sessions = state.settings, state.sessions
    body = await read_chat_request(request, settings)
    wanted = from_native(body)
    input_limits.check(wanted, settings, appended=appended_turns(body, wanted))
    if settings.chat_direct_llm:
        return _direct(body, settings, state.llm_client())
    sessions.check_streams()
    requested_at = time.time()
    task, traceparent = await sessions.enqueue(
        wanted, owner=key, traceparent=request.headers.get(TRACEPARENT_HEADER)
    )
    return StreamingResponse(
        sessions.text(task.session_id, requested_at),
        media_type="text/plain; charset=utf-8",
        headers={**_session_headers(task.session_id, traceparent), **STREAM_HEADERS},
    )


def _direct(body: ChatRequest, settings: APISettings, client: Any) -> StreamingResponse:
    """The proof of concept's behaviour: the API itself calls the LLM."""
    session_id = body.session_id or new_id()
    wanted = from_native(body)
    names = ("temperature", "top_p", "max_tokens", "stop", "seed", "user")
    params = {name: getattr(wanted, name) for name in names}
    messages = [{"role": m.role, "content": m.content} for m in wanted.messages or ()] or None

    async def answer() -> AsyncIterator[bytes]:
        try:
            from mqcommon.llm import stream_answer  # the SDK: only direct mode needs it

            async for text in stream_answer(
                client, settings, body.message, body.model, messages=messages, params=params
            ):
                yield text.encode()
        except UpstreamError as exc:
            yield f"\n[error] LLM error: {exc}\n".encode()

    return StreamingResponse(
        answer(), media_type="text/plain; charset=utf-8",
        headers={"X-Session-ID": session_id, **STREAM_HEADERS},
    )


@router.get(
    "/stream/{session_id}", summary="Stream a session's answer as Server-Sent Events",
    response_class=EventSourceResponse, responses=STREAM_RESPONSES,
)
async def stream(
    session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)],
    settings: SettingsDep,
    sessions: SessionsDep,
    key: KeyDep,
    last_event_id: Annotated[str | None, Header()] = None,
    parts: Annotated[bool, Query(
        description="Send every part of the answer (reasoning, tool calls, ...) as events with a "
        "`part` key, not its text alone (docs/events.md).",
    )] = False,
) -> EventSourceResponse:
    after = 0
    if last_event_id:
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not (last_event_id.strip().isascii() and last_event_id.strip().isdigit()):
            raise APIError(400, "invalid_last_event_id", "Last-Event-ID must be a whole number")
        after = int(last_event_id.strip())
    # With keys on, whose session it is is settled before the stream opens: another key's
    # session, like one nobody queued within STREAM_WAIT_TIMEOUT_S, is a 404.
    if key is not None and not await sessions.owns(session_id, key, stream=True):
        raise NotFound(f"session {session_id!r} not found")
    sessions.check_streams()
    return EventSourceResponse(
        sessions.sse(session_id, after, typed=parts),
        ping=settings.sse_ping_s,
        headers={"X-Session-ID": session_id, **STREAM_HEADERS},
    )
