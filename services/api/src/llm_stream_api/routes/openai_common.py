"""What the OpenAI-compatible routes share: reading a body, following a session to its end."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from llm_stream_api.broker import Broker
from llm_stream_api.hub import Session, SessionHub
from llm_stream_api.openai_errors import validation_error
from llm_stream_api.protocol.openai_base import OpenAIError
from llm_stream_api.request_body import read_limited
from llm_stream_api.settings import APISettings
from llm_stream_api.streaming import follow

Body = TypeVar("Body", bound=BaseModel)

# How long a GET waits to learn whether another replica or a worker knows a session.
LOOKUP_WAIT_S = 3.0


async def read_body(request: Request, settings: APISettings, model: type[Body]) -> Body:
    """Parse the body as JSON whatever its content type, into ``model``."""
    raw = await read_limited(request, settings.max_body_bytes)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(
            400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(list(exc.errors(include_url=False))) from exc


async def answer(
    hub: SessionHub, session_id: str, settings: APISettings, broker: Broker
) -> tuple[str, str, str | None]:
    """Wait for the whole answer: its text, how it ended, and the error if any."""
    parts: list[str] = []
    async for piece in follow(hub, session_id, 0, settings, broker.discover):
        if piece.kind is None:
            parts.append(piece.text)
        else:
            return "".join(parts), piece.kind, piece.error
    raise AssertionError("follow ended without a final piece")


async def look_up(
    hub: SessionHub, broker: Broker, session_id: str, wait_s: float = LOOKUP_WAIT_S
) -> Session | None:
    """The session if this replica, another one or a worker knows it; None otherwise."""
    session = hub.session(session_id)
    if session.known and (session.tracked or session.ended):
        return session
    session.readers += 1  # served while we ask, so nobody abandons it meanwhile
    try:
        broker.discover(session)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not (session.started or session.ended or session.looked_up):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await session.wait(remaining)
    finally:
        session.readers -= 1
    return session if session.known else None
