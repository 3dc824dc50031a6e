"""OpenAI's Responses API for long or detachable work, through the queue and the workers.

- ``POST /v1/responses``: ``background: true`` answers at once (status ``queued``);
  ``stream: true`` streams the events; neither waits and answers the finished response.
  ``previous_response_id`` continues a stored response (``service.stored``).
- ``GET /v1/responses/{id}``: status (queued, in_progress, completed, failed, cancelled) and
  output so far, from any replica. ``?stream=true&starting_after=N`` streams from event N + 1.
- ``POST /v1/responses/{id}/cancel``: idempotent; the response as it is afterwards.

A foreground stream whose client leaves cancels its generation; a background one never does.
The replica that created a background response serves it until it ends, so the workers never
take it for abandoned while nobody polls (they still do if that replica goes away).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from mqcommon.parts import CONTENT, Part
from mqcommon.schemas import SESSION_ID_PATTERN, id_time, new_id
from mqcommon.tracing import TRACEPARENT_HEADER
from sse_starlette import EventSourceResponse

from llm_stream_api.deps import KeyDep, SessionsDep, SettingsDep, StoredDep
from llm_stream_api.dialects import OpenAIRoute
from llm_stream_api.dialects.openai import end_error
from llm_stream_api.openapi.responses import ANSWER_ERRORS, BODY_ERRORS, LOOKUP_ERRORS
from llm_stream_api.protocol import responses as protocol
from llm_stream_api.protocol import responses_output as outputs
from llm_stream_api.protocol.errors import NotFound
from llm_stream_api.protocol.native import inline_schema
from llm_stream_api.quota import input_limits
from llm_stream_api.routes import STREAM_HEADERS
from llm_stream_api.routes.bodies import read_openai_body
from llm_stream_api.service.sessions import SessionService
from llm_stream_api.service.streams import StreamMeter
from llm_stream_api.sessions.hub import TIMEOUT, Session
from llm_stream_api.settings import APISettings

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

ResponseId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


def _meta(response_id: str, session: Session, sessions: SessionService) -> protocol.Meta:
    """What this replica knows of a response it created (model, parameters); another replica
    reports the text and status it learns from the workers, with the default model."""
    found = sessions.annotation(response_id)
    if isinstance(found, protocol.Meta):
        return found
    return protocol.Meta(sessions.settings.llm_model, _created_at(response_id, session.accepted_at))


def _created_at(response_id: str, otherwise: float | None) -> float:
    """When the response was made: its id says, alike on every replica."""
    return id_time(response_id) or otherwise or time.time()


def _status(session: Session) -> str:
    if session.end_kind is not None:
        return protocol.STATUS_OF_END[session.end_kind]
    return "in_progress" if (session.started or session.text) else "queued"


def _object(
    response_id: str, session: Session, meta: protocol.Meta, status: str | None = None
) -> dict[str, Any]:
    status = status or _status(session)
    return protocol.response_object(
        response_id, meta, status, session.text, session.parts(), error=session.error, usage=session.usage
    )


BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(protocol.ResponseRequest)}
}}}


@router.post(
    "/responses", response_model=None, summary="OpenAI Responses: create one", openapi_extra=BODY,
    responses={200: protocol.RESPONSE, **BODY_ERRORS, **ANSWER_ERRORS, 404: LOOKUP_ERRORS[404]},
)
async def create_response(
    request: Request, settings: SettingsDep, sessions: SessionsDep, stored: StoredDep, key: KeyDep
) -> object:
    body = await read_openai_body(request, settings, protocol.ResponseRequest)
    response_id = f"resp_{new_id()}"
    body.refuse_what_we_cannot_honour()
    before = await stored.conversation(body.previous_response_id, key) if body.previous_response_id else None
    turns = body.turns(before)
    wanted = body.task_request(response_id, turns)
    input_limits.check(wanted, settings, protocol.LIMIT_NAMES)
    if body.stream:
        sessions.check_streams()
    task, _ = await sessions.enqueue(wanted, owner=key, traceparent=request.headers.get(TRACEPARENT_HEADER))
    if body.stored:
        await stored.store(response_id, turns, key)
    meta = protocol.Meta(body.model or settings.llm_model, _created_at(response_id, task.created_at), body)
    sessions.annotate(response_id, meta)
    session = sessions.session(response_id)
    if body.background:
        sessions.keep_served(response_id)
    if body.stream:
        return _stream(sessions, response_id, settings, meta, -1, cancel_on_disconnect=not body.background)
    if body.background:
        return _object(response_id, session, meta, "queued")
    await sessions.answer(response_id)
    return _object(response_id, session, meta)


@router.get(
    "/responses/{response_id}", response_model=None, summary="OpenAI Responses: one, or its events",
    responses={200: protocol.RESPONSE, **LOOKUP_ERRORS},
)
async def get_response(
    response_id: ResponseId, settings: SettingsDep, sessions: SessionsDep, key: KeyDep,
    stream: bool = False, starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> object:
    session = await sessions.find(response_id, key)
    if session is None:
        raise _not_found(response_id)
    meta = _meta(response_id, session, sessions)
    if stream:
        sessions.check_streams()
        after = -1 if starting_after is None else starting_after
        return _stream(sessions, response_id, settings, meta, after, cancel_on_disconnect=False)
    found = _object(response_id, session, meta)
    if found["status"] == "queued" and (where := await sessions.position_of(response_id)) is not None:
        # Not in OpenAI's object (the SDK keeps it as an extra field): where it waits.
        found["queue"] = {"position": where[0], "eta_s": where[1]}
    return found


@router.post(
    "/responses/{response_id}/cancel", response_model=None, summary="OpenAI Responses: cancel one",
    responses={200: {**protocol.RESPONSE, "content": {
        "application/json": protocol.RESPONSE["content"]["application/json"]
    }}, **LOOKUP_ERRORS, 503: BODY_ERRORS[503]},
)
async def cancel_response(response_id: ResponseId, sessions: SessionsDep, key: KeyDep) -> object:
    outcome = await sessions.cancel(response_id, key)
    if outcome.status == "not_found":
        raise _not_found(response_id)
    session = sessions.session(response_id)
    status = "cancelled" if outcome.status in ("cancelled", "cancelling") else None
    return _object(response_id, session, _meta(response_id, session, sessions), status)


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id {response_id!r} not found.", param="response_id")


def _stream(
    sessions: SessionService, response_id: str, settings: APISettings, meta: protocol.Meta,
    after: int, *, cancel_on_disconnect: bool,
) -> EventSourceResponse:
    return EventSourceResponse(
        _events(sessions, response_id, meta, after, cancel_on_disconnect),
        ping=settings.sse_ping_s, headers={"X-Session-ID": response_id, **STREAM_HEADERS},
    )


async def _events(
    sessions: SessionService, response_id: str, meta: protocol.Meta, after: int, cancel_on_disconnect: bool,
) -> AsyncIterator[bytes]:
    """The response's events with sequence numbers above ``after``."""
    session = sessions.session(response_id)
    meter = StreamMeter("responses", session.accepted_at if after < 0 else None, sessions.streams)
    held = session.kinds.window(0) if session.kinds is not None else [(CONTENT, len(session.text))]
    known = outputs.layout(held)
    items = outputs.OutputEvents(response_id, after, lambda start, stop: _held(session, start, stop), known)
    ended = False
    try:
        if after < 1:
            created = protocol.as_created(_object(response_id, session, meta))
            for data in protocol.opening(created, after):
                yield data
        async for piece in sessions.follow(response_id, items.start):
            if piece.kind is None:
                parts = piece.parts or [(CONTENT, piece.text)]
                data = items.feed(parts, piece.position) if piece.text else b""
            elif piece.kind == TIMEOUT:
                ended = True
                number = items.error_number(piece.position)
                error = end_error(piece.kind, piece.error)
                data = protocol.error_event(number, error) if number > after else b""
            else:
                ended = True
                data = items.finish(_object(response_id, session, meta), len(session.text))
            meter.sent(piece, len(data))
            if data:
                yield data
        if not ended and session.ended:  # resumed beyond the last delta: only closing events left
            ended = True
            yield items.finish(_object(response_id, session, meta), len(session.text))
    finally:
        if not ended and cancel_on_disconnect:
            sessions.cancel_soon(response_id)
        meter.close(sessions.get(response_id), response_id)


def _held(session: Session, start: int, stop: int) -> list[Part]:
    return session.parts(start, stop) or [(CONTENT, session.text[start:stop])]
