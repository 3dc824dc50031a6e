"""What the OpenAPI document says about errors and headers: the ``responses=`` of the routes.

Each dialect's error body has its schema here (``native_error``, ``openai_error``); the errors
themselves are in ``protocol.errors`` and are written by ``dialects``.
"""

from __future__ import annotations

from typing import Any

from llm_stream_api.protocol.native import ErrorBody

RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
}
SESSION_HEADERS = {
    "X-Session-ID": {"description": "The session's id.", "required": True, "schema": {"type": "string"}},
    "X-Trace-ID": {"description": "The request's W3C trace id (may be empty).", "schema": {"type": "string"}},
}


def native_error(description: str, **extra: Any) -> dict[str, Any]:
    # The schema inline rather than as ``model``: FastAPI would list a model under the route's
    # own media type (text/plain, text/event-stream), while errors are always JSON.
    schema = ErrorBody.model_json_schema()
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


BROKER_UNAVAILABLE = native_error(
    "`broker_unavailable`: the broker is down or did not confirm in time. `overloaded`: the queue "
    "holds MAX_QUEUED_TASKS, or this process serves MAX_OPEN_STREAMS streams; `Retry-After` says "
    "when there should be room, from the backlog and the measured drain rate.",
    headers=RETRY_AFTER_HEADER,
)
CHAT_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: native_error("`invalid_json`: the body is not JSON."),
    403: native_error(
        "`service_tier_not_allowed`: the key may not use that `service_tier` (KEY_SERVICE_TIERS)."
    ),
    404: native_error("`model_not_found`: no model pool serves `model` (LLM_POOLS)."),
    409: native_error("`conflict`: `session_id` is already in use."),
    413: native_error("`too_large`: the body is over MAX_BODY_BYTES."),
    422: native_error(
        "`validation_error`: a field is missing or invalid (`detail` lists each problem). "
        "`limit_exceeded`: over an input limit (MAX_MESSAGES, MAX_TOTAL_CHARS, LLM_MAX_TOKENS); "
        "`model_not_allowed`: `model` is not in MODELS_ALLOWED. `param` names the field."
    ),
    503: BROKER_UNAVAILABLE,
}
STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    400: native_error("`invalid_last_event_id`: `Last-Event-ID` is not a whole number."),
    422: native_error("`validation_error`: the session id is not valid."),
    503: native_error(
        "`overloaded`: this process serves MAX_OPEN_STREAMS streams; `Retry-After` says when "
        "there should be room, from the rate at which streams close.", headers=RETRY_AFTER_HEADER,
    ),
}

# One event of the stream, as an SSE parser sees it: ``data`` is JSON text, ``id`` resumes.
NATIVE_SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "event": {"type": "string"},
    },
    "required": ["data"],
}
CHAT_ASYNC_RESPONSES = {200: {"headers": SESSION_HEADERS}, **CHAT_BODY_ERRORS}
CHAT_TEXT_RESPONSES = {
    200: {
        "description": "The answer as it is generated. A failure ends it with a line `[error] <message>`.",
        "headers": SESSION_HEADERS,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **CHAT_BODY_ERRORS,
}
STREAM_RESPONSES = {
    200: {
        "description": 'Server-Sent Events: `{"chunk": "..."}`, then `{"type": "done"}` or '
        '`{"type": "error", "error": "..."}`; each with an `id` to resume from (Last-Event-ID).',
        "content": {"text/event-stream": {"schema": NATIVE_SSE_EVENT_SCHEMA}},
    },
    **STREAM_ERRORS,
}

CANCEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: native_error("`not_found`: no replica and no worker knows this session (or, with API keys "
                      "on, another key created it)."),
    422: native_error("`validation_error`: the session id is not valid."),
    503: BROKER_UNAVAILABLE,
}


# The error object, for the OpenAPI document (``responses=`` of the ``/v1`` routes).
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


def openai_error(description: str, **extra: Any) -> dict[str, Any]:
    """One error status of a ``/v1`` route, for its ``responses=``."""
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}, **extra}


INVALID = openai_error(
    "`invalid_request_error`: bad JSON, an invalid field or parameter (`param` names it), a parameter "
    "that cannot be honoured (`unsupported_parameter`), an input limit (`limit_exceeded`, "
    "`model_not_allowed`); or the LLM refused the request (`upstream_refused`)."
)
NOT_FOUND = openai_error("`not_found_error`: no such response, or no such model.")
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: INVALID,
    403: openai_error(
        "`permission_error` `service_tier_not_allowed`: the key may not use that `service_tier`."
    ),
    404: openai_error("`not_found_error` `model_not_found`: no model pool serves `model` (LLM_POOLS)."),
    413: openai_error("The body is over MAX_BODY_BYTES."),
    503: openai_error(
        "`server_error`: the broker is unavailable, or the API is overloaded; `Retry-After` says when "
        "to try again (the SDKs wait for it).", headers=RETRY_AFTER_HEADER,
    ),
}
ANSWER_ERRORS: dict[int | str, dict[str, Any]] = {
    502: openai_error("`server_error`: the LLM failed after every allowed attempt."),
    504: openai_error("`server_error`: the request waited past STREAM_IDLE_TIMEOUT_S."),
}
LOOKUP_ERRORS: dict[int | str, dict[str, Any]] = {400: INVALID, 404: NOT_FOUND}
