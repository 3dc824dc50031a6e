"""Every error the API returns, mapped in one place to a status and a JSON body.

Bodies look like ``{"error": "<code>", "message": "<what is wrong>", ...}`` so a client
can branch on ``error`` and show ``message``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mqcommon.errors import BrokerUnavailable
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_stream_api import metrics
from llm_stream_api.models import ErrorBody

RETRY_AFTER_S = 5


class APIError(Exception):
    """An error answered with ``status`` and a body in the route's dialect.

    ``headers`` travel with it in both dialects (``Retry-After`` on 429 and 503); ``extra``
    fields go into the native body only.
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers or {}


class SessionConflict(APIError):
    def __init__(self, session_id: str) -> None:
        super().__init__(409, "conflict", f"session_id {session_id!r} is already in use")


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body is larger than {limit} bytes")


class Unauthorized(APIError):
    """No API key, or one nobody issued (``auth``). The key itself is never quoted."""

    def __init__(self, *, missing: bool) -> None:
        if missing:
            message = "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
            challenge = 'Bearer realm="llm-stream"'
        else:
            message = "the API key is not valid"
            challenge = 'Bearer realm="llm-stream", error="invalid_token"'
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


class RateLimited(APIError):
    """Past one of the key's limits (``rate_limits``); ``Retry-After`` says when it frees."""

    def __init__(self, limit: str, message: str, retry_after_s: int) -> None:
        super().__init__(
            429, "rate_limited", message, headers={"Retry-After": str(retry_after_s)}, limit=limit
        )


class LimitExceeded(APIError):
    """A request over an input limit (``limits``). ``param`` names the field in both dialects."""

    def __init__(self, param: str, message: str, *, code: str = "limit_exceeded") -> None:
        super().__init__(422, code, f"{param}: {message}", param=param)


class Overloaded(APIError):
    """Past a bound of admission control: the queue is full, or this process serves its most
    streams. ``retry_after_s`` comes from the backlog and the measured drain rate."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(503, "overloaded", message, headers={"Retry-After": str(retry_after_s)})


# -- what the OpenAPI document says about these errors (``responses=`` of the routes) -------

RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
}
SESSION_HEADERS = {
    "X-Session-ID": {"description": "The session's id.", "required": True, "schema": {"type": "string"}},
    "X-Trace-ID": {"description": "The request's W3C trace id (may be empty).", "schema": {"type": "string"}},
}


def _error(description: str, **extra: Any) -> dict[str, Any]:
    # The schema inline rather than as ``model``: FastAPI would list a model under the route's
    # own media type (text/plain, text/event-stream), while errors are always JSON.
    schema = ErrorBody.model_json_schema()
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


BROKER_UNAVAILABLE = _error(
    "`broker_unavailable`: the broker is down or did not confirm in time. `overloaded`: the queue "
    "holds MAX_QUEUED_TASKS, or this process serves MAX_OPEN_STREAMS streams; `Retry-After` says "
    "when there should be room, from the backlog and the measured drain rate.",
    headers=RETRY_AFTER_HEADER,
)
CHAT_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("`invalid_json`: the body is not JSON."),
    409: _error("`conflict`: `session_id` is already in use."),
    413: _error("`too_large`: the body is over MAX_BODY_BYTES."),
    422: _error(
        "`validation_error`: a field is missing or invalid (`detail` lists each problem). "
        "`limit_exceeded`: over an input limit (MAX_MESSAGES, MAX_TOTAL_CHARS, LLM_MAX_TOKENS); "
        "`model_not_allowed`: `model` is not in MODELS_ALLOWED. `param` names the field."
    ),
    503: BROKER_UNAVAILABLE,
}
STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("`invalid_last_event_id`: `Last-Event-ID` is not a whole number."),
    422: _error("`validation_error`: the session id is not valid."),
    503: _error(
        "`overloaded`: this process serves MAX_OPEN_STREAMS streams; `Retry-After` says when "
        "there should be room, from the rate at which streams close.", headers=RETRY_AFTER_HEADER,
    ),
}

# One event of the stream, as an SSE parser sees it: ``data`` is JSON text, ``id`` resumes.
SSE_EVENT_SCHEMA = {
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
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    },
    **STREAM_ERRORS,
}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in exc.errors()
        ]
        if any(err.get("type") == "json_invalid" for err in errors):
            metrics.REJECTED.labels("invalid_json").inc()
            return JSONResponse(
                error_body("invalid_json", "request body is not valid JSON"), status_code=400
            )
        metrics.REJECTED.labels("validation").inc()
        return JSONResponse(
            error_body("validation_error", _describe(errors), detail=errors), status_code=422
        )

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable) -> JSONResponse:
        metrics.REJECTED.labels("broker_unavailable").inc()
        return JSONResponse(
            error_body("broker_unavailable", f"the message broker is unavailable: {exc}"),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        metrics.REJECTED.labels("validation" if exc.code == "validation_error" else exc.code).inc()
        body = error_body(exc.code, exc.message, **exc.extra)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )
