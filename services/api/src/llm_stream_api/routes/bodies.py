"""Reading a request body: a size limit, JSON whatever the ``Content-Type``, then a model.

The old clients omit the content type, so the body is read as JSON whatever it says, and
refused as soon as it is larger than ``MAX_BODY_BYTES``, before it is all in memory. Each
dialect refuses a bad body in its own words: the native 422 lists every problem, OpenAI's
400 names the first parameter.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from llm_stream_api.dialects import openai
from llm_stream_api.protocol.errors import APIError, BodyTooLarge, OpenAIError
from llm_stream_api.protocol.native import ChatRequest
from llm_stream_api.settings import APISettings

Body = TypeVar("Body", bound=BaseModel)


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The raw body; raises ``BodyTooLarge`` past ``max_bytes``."""
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > max_bytes:
        raise BodyTooLarge(max_bytes)
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > max_bytes:
            raise BodyTooLarge(max_bytes)
    return raw


async def read_chat_request(request: Request, settings: APISettings) -> ChatRequest:
    """The native body of ``/chat`` and ``/chat/async``."""
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


async def read_openai_body(request: Request, settings: APISettings, model: type[Body]) -> Body:
    """An OpenAI body, into ``model``."""
    raw = await read_limited(request, settings.max_body_bytes)
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(
            400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(data, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise openai.validation_error([dict(err) for err in exc.errors(include_url=False)]) from exc
