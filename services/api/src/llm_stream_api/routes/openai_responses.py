"""OpenAI's Responses API for long or detachable work, through the queue and the workers.

- ``POST /v1/responses``: ``background: true`` answers at once (status ``queued``);
  ``stream: true`` streams the events; neither waits and answers the finished response.
- ``GET /v1/responses/{id}``: status (queued, in_progress, completed, failed, cancelled) and
  output so far, from any replica. ``?stream=true&starting_after=N`` streams from event N + 1.
- ``POST /v1/responses/{id}/cancel``: idempotent; the response as it is afterwards.

A foreground stream whose client leaves cancels its generation; a background one never does.
The replica that created a background response serves it until it ends, so the workers never
take it for abandoned while nobody polls (they still do if that replica goes away).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from mqcommon.schemas import SESSION_ID_PATTERN, new_id
from sse_starlette import EventSourceResponse

from llm_stream_api import admission, limits, openai_errors
from llm_stream_api.auth import KeyDep
from llm_stream_api.broker import YOUNG_GRACE_S, Broker
from llm_stream_api.deps import BrokerDep, HubDep, SettingsDep
from llm_stream_api.hub import TIMEOUT, Session, SessionHub
from llm_stream_api.models import inline_schema
from llm_stream_api.openai_errors import end_error
from llm_stream_api.ownership import owns
from llm_stream_api.protocol import responses as protocol
from llm_stream_api.protocol.openai_base import OpenAIError
from llm_stream_api.routes.openai_common import answer, look_up, read_body
from llm_stream_api.settings import APISettings
from llm_stream_api.streaming import StreamMeter, follow
from llm_stream_api.tasks import enqueue

router = APIRouter(prefix="/v1")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ResponseId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]

# What this replica knows of the responses it created (model, parameters); another replica
# reports the text and status it learns from the workers, with the default model.
_META: OrderedDict[str, protocol.Meta] = OrderedDict()
META_KEPT = 10_000


# Background responses this replica keeps served until they end.
_KEEPING: set[asyncio.Task[object]] = set()


def _keep_served(hub: SessionHub, response_id: str, settings: APISettings, broker: Broker) -> None:
    task = asyncio.create_task(answer(hub, response_id, settings, broker))
    _KEEPING.add(task)
    task.add_done_callback(_KEEPING.discard)


def _remember(response_id: str, meta: protocol.Meta) -> None:
    _META[response_id] = meta
    while len(_META) > META_KEPT:
        _META.popitem(last=False)


def _meta(response_id: str, session: Session, settings: APISettings) -> protocol.Meta:
    found = _META.get(response_id)
    return found or protocol.Meta(settings.llm_model, session.accepted_at or time.time())


def _status(session: Session) -> str:
    if session.end_kind is not None:
        return protocol.STATUS_OF_END[session.end_kind]
    return "in_progress" if (session.started or session.text) else "queued"


def _object(response_id: str, session: Session, meta: protocol.Meta, status: str | None = None) -> dict:
    status = status or _status(session)
    return protocol.response_object(
        response_id, meta, status, session.text, error=session.error, usage=session.usage
    )


BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(protocol.ResponseRequest)}
}}}


@router.post(
    "/responses", response_model=None, summary="OpenAI Responses: create one", openapi_extra=BODY,
    responses={200: protocol.RESPONSE, **openai_errors.BODY_ERRORS, **openai_errors.ANSWER_ERRORS},
)
async def create_response(
    request: Request, settings: SettingsDep, broker: BrokerDep, hub: HubDep
) -> object:
    body = await read_body(request, settings, protocol.ResponseRequest)
    response_id = f"resp_{new_id()}"
    wanted = body.task_request(response_id)
    limits.check(wanted, settings, protocol.LIMIT_NAMES)
    if body.stream:
        admission.check_streams(settings)
    task, _ = await enqueue(wanted, request, broker, hub)
    meta = protocol.Meta(body.model or settings.llm_model, task.created_at, body)
    _remember(response_id, meta)
    session = hub.session(response_id)
    if body.background:
        _keep_served(hub, response_id, settings, broker)
    if body.stream:
        return _stream(hub, response_id, settings, broker, meta, -1, cancel_on_disconnect=not body.background)
    if body.background:
        return _object(response_id, session, meta, "queued")
    await answer(hub, response_id, settings, broker)
    return _object(response_id, session, meta)


@router.get(
    "/responses/{response_id}", response_model=None, summary="OpenAI Responses: one, or its events",
    responses={200: protocol.RESPONSE, **openai_errors.LOOKUP_ERRORS},
)
async def get_response(
    response_id: ResponseId, settings: SettingsDep, broker: BrokerDep, hub: HubDep, key: KeyDep,
    stream: bool = False, starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> object:
    session = await _known(hub, broker, response_id)
    if key is not None and session.owner != key:
        raise _not_found(response_id)
    meta = _meta(response_id, session, settings)
    if stream:
        admission.check_streams(settings)
        after = -1 if starting_after is None else starting_after
        return _stream(hub, response_id, settings, broker, meta, after, cancel_on_disconnect=False)
    found = _object(response_id, session, meta)
    if found["status"] == "queued" and (position := broker.queue.position_of(response_id)) is not None:
        # Not in OpenAI's object (the SDK keeps it as an extra field): where it waits.
        found["queue"] = {"position": position, "eta_s": broker.queue.eta(position)}
    return found


@router.post(
    "/responses/{response_id}/cancel", response_model=None, summary="OpenAI Responses: cancel one",
    responses={200: {**protocol.RESPONSE, "content": {
        "application/json": protocol.RESPONSE["content"]["application/json"]
    }}, **openai_errors.LOOKUP_ERRORS, 503: openai_errors.BODY_ERRORS[503]},
)
async def cancel_response(
    response_id: ResponseId, settings: SettingsDep, broker: BrokerDep, hub: HubDep, key: KeyDep
) -> object:
    wait_s = YOUNG_GRACE_S + settings.history_timeout_s
    if key is not None and not await owns(hub, broker, response_id, key, wait_s=wait_s):
        raise _not_found(response_id)
    outcome = await broker.cancel(response_id)
    if outcome.status == "not_found":
        raise _not_found(response_id)
    session = hub.session(response_id)
    status = "cancelled" if outcome.status in ("cancelled", "cancelling") else None
    return _object(response_id, session, _meta(response_id, session, settings), status)


async def _known(hub: SessionHub, broker: Broker, response_id: str) -> Session:
    session = await look_up(hub, broker, response_id)
    if session is None:
        raise _not_found(response_id)
    return session


def _not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id {response_id!r} not found.", param="response_id",
                       code="not_found")


def _stream(
    hub: SessionHub, response_id: str, settings: APISettings, broker: Broker, meta: protocol.Meta,
    after: int, *, cancel_on_disconnect: bool,
) -> EventSourceResponse:
    return EventSourceResponse(
        _events(hub, response_id, settings, broker, meta, after, cancel_on_disconnect),
        ping=settings.sse_ping_s, headers={"X-Session-ID": response_id, **STREAM_HEADERS},
    )


async def _events(
    hub: SessionHub, response_id: str, settings: APISettings, broker: Broker, meta: protocol.Meta,
    after: int, cancel_on_disconnect: bool,
) -> AsyncIterator[bytes]:
    """The response's events with sequence numbers above ``after``."""
    session = hub.session(response_id)
    meter = StreamMeter("responses", session.accepted_at if after < 0 else None)
    ended = False
    try:
        if after < protocol.FIRST_DELTA:
            for data in protocol.opening(response_id, _object(response_id, session, meta), after):
                yield data
        start = max(0, after - protocol.FIRST_DELTA)
        async for piece in follow(hub, response_id, start, settings, broker.discover):
            if piece.kind is None:
                data = protocol.delta(response_id, piece.position, piece.text)
            elif piece.kind == TIMEOUT:
                ended = True
                error = end_error(piece.kind, piece.error)
                data = protocol.error_event(protocol.FIRST_DELTA + piece.position, error)
            else:
                ended = True
                final = _object(response_id, session, meta)
                data = b"".join(protocol.closing(response_id, final, session.text, after))
            meter.sent(piece, len(data))
            if data:
                yield data
        if not ended and session.ended:  # resumed beyond the last delta: only closing events left
            ended = True
            final = _object(response_id, session, meta)
            for data in protocol.closing(response_id, final, session.text, after):
                yield data
    finally:
        if not ended and cancel_on_disconnect:
            broker.cancel_soon(response_id)
        meter.close(hub.get(response_id), response_id)
