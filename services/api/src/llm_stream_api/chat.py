"""The chat routes: queue a request, stream its answer (SSE or plain text)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
import structlog
from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from mqcommon.errors import UpstreamError
from mqcommon.schemas import SESSION_ID_PATTERN, new_id
from mqcommon.tracing import trace_id_of
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from llm_stream_api import admission, limits
from llm_stream_api.auth import KeyDep
from llm_stream_api.deps import BrokerDep, HubDep, SettingsDep
from llm_stream_api.errors import (
    CHAT_ASYNC_RESPONSES,
    CHAT_TEXT_RESPONSES,
    STREAM_RESPONSES,
    APIError,
)
from llm_stream_api.models import ChatRequest, Queued, inline_schema
from llm_stream_api.ownership import owns
from llm_stream_api.request_body import read_limited
from llm_stream_api.streaming import sse_body, text_body
from llm_stream_api.tasks import TaskRequest, enqueue, from_native

router = APIRouter()
log = structlog.get_logger(__name__)

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_chat_request(request: Request, settings) -> ChatRequest:
    """Parse the body as JSON whatever its content type (old clients omit the header)."""
    raw = await read_limited(request, settings.max_body_bytes)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, "invalid_json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError(422, "validation_error", "body: expected a JSON object")
    try:
        body = ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from exc
    if body.message is not None and len(body.message) > settings.max_message_chars:
        raise APIError(
            422, "validation_error",
            f"message: longer than MAX_MESSAGE_CHARS ({settings.max_message_chars} characters)",
        )
    return body


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
    request: Request, response: Response, settings: SettingsDep, broker: BrokerDep, hub: HubDep
) -> Queued:
    body = await read_chat_request(request, settings)
    wanted = from_native(body)
    limits.check(wanted, settings, appended=_appended(body, wanted))
    task, traceparent = await enqueue(wanted, request, broker, hub, reader_here=False)
    response.headers.update(_session_headers(task.session_id, traceparent))
    return Queued(session_id=task.session_id, stream_url=f"/stream/{task.session_id}")


@router.post(
    "/chat", summary="Ask and stream the answer as plain text", openapi_extra=CHAT_BODY,
    response_class=PlainTextResponse, responses=CHAT_TEXT_RESPONSES,
)
async def chat(
    request: Request, settings: SettingsDep, broker: BrokerDep, hub: HubDep
) -> StreamingResponse:
    body = await read_chat_request(request, settings)
    wanted = from_native(body)
    limits.check(wanted, settings, appended=_appended(body, wanted))
    if settings.chat_direct_llm:
        return _direct(body, request)
    admission.check_streams(settings)
    requested_at = time.time()
    task, traceparent = await enqueue(wanted, request, broker, hub)
    return StreamingResponse(
        text_body(hub, task.session_id, settings, requested_at, broker.discover, broker.cancel_soon),
        media_type="text/plain; charset=utf-8",
        headers={**_session_headers(task.session_id, traceparent), **STREAM_HEADERS},
    )


def _direct(body: ChatRequest, request: Request) -> StreamingResponse:
    """The proof of concept's behaviour: the API itself calls the LLM."""
    settings = request.app.state.settings
    client = request.app.state.llm_client()
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
    hub: HubDep,
    broker: BrokerDep,
    key: KeyDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    after = 0
    if last_event_id:
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not (last_event_id.strip().isascii() and last_event_id.strip().isdigit()):
            raise APIError(400, "invalid_last_event_id", "Last-Event-ID must be a whole number")
        after = int(last_event_id.strip())
    # With keys on, whose session it is is settled before the stream opens: another key's
    # session, like one nobody queued within STREAM_WAIT_TIMEOUT_S, is a 404.
    if key is not None and not await owns(
        hub, broker, session_id, key, wait_s=settings.stream_wait_timeout_s, until_known=True
    ):
        raise APIError(404, "not_found", f"session {session_id!r} not found")
    admission.check_streams(settings)
    return EventSourceResponse(
        sse_body(hub, session_id, after, settings, broker.discover, broker.queue),
        ping=settings.sse_ping_s,
        headers={"X-Session-ID": session_id, **STREAM_HEADERS},
    )


def _appended(body: ChatRequest, wanted: TaskRequest) -> int:
    """1 when ``message`` was added after the ``messages`` the client sent."""
    if body.messages is None or wanted.messages is None:
        return 0
    return len(wanted.messages) - len(body.messages)
