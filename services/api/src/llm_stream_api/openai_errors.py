"""Every error of the OpenAI-compatible routes (``/v1/...``), mapped in one place.

The body is OpenAI's error object, ``{"error": {"message", "type", "param", "code"}}``, so the
official SDKs raise their own classes (``BadRequestError``, ``NotFoundError``, ...) with our
message. The same failures keep their native bodies (``errors``) on every other path: each
handler here answers for ``/v1`` paths and hands the rest to the native one.

    400  invalid_request_error  bad JSON, an invalid field, a parameter we cannot honour,
                                an input limit (``limit_exceeded``, ``model_not_allowed``)
    404  not_found_error        unknown path, unknown response id
    405  invalid_request_error  wrong method
    413  invalid_request_error  body over MAX_BODY_BYTES
    503  server_error           broker unavailable (with Retry-After, which the SDKs honour)
    502/504                     the LLM failed or timed out (non-streamed answers)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mqcommon.errors import BrokerUnavailable
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_stream_api import metrics
from llm_stream_api.errors import RETRY_AFTER_S, APIError
from llm_stream_api.hub import CANCELLED, TIMEOUT
from llm_stream_api.protocol.openai_base import OpenAIError

PREFIX = "/v1/"

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


def documented(description: str, **extra: Any) -> dict[str, Any]:
    """One error status of a ``/v1`` route, for its ``responses=``."""
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}, **extra}


RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
}
INVALID = documented(
    "`invalid_request_error`: bad JSON, an invalid field or parameter (`param` names it), a parameter "
    "that cannot be honoured (`unsupported_parameter`), an input limit (`limit_exceeded`, "
    "`model_not_allowed`); or the LLM refused the request (`upstream_refused`)."
)
NOT_FOUND = documented("`not_found_error`: no such response, or no such model.")
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: INVALID,
    413: documented("The body is over MAX_BODY_BYTES."),
    503: documented(
        "`server_error`: the broker is unavailable, or the API is overloaded; `Retry-After` says when "
        "to try again (the SDKs wait for it).", headers=RETRY_AFTER,
    ),
}
ANSWER_ERRORS: dict[int | str, dict[str, Any]] = {
    502: documented("`server_error`: the LLM failed after every allowed attempt."),
    504: documented("`server_error`: the request waited past STREAM_IDLE_TIMEOUT_S."),
}
LOOKUP_ERRORS: dict[int | str, dict[str, Any]] = {400: INVALID, 404: NOT_FOUND}


def validation_error(errors: list[dict[str, Any]]) -> OpenAIError:
    """A pydantic or FastAPI validation failure: the first problem, with its parameter."""
    first = errors[0] if errors else {}
    loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    param = ""
    for part in loc:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return OpenAIError(400, message, param=param or None, code="invalid_value")


def end_error(kind: str, error: str | None) -> OpenAIError:
    """How a session that did not end ``done`` is reported."""
    if kind == CANCELLED:
        return OpenAIError(400, "the request was cancelled", code="cancelled")
    if kind == TIMEOUT:
        return OpenAIError(504, error or "timed out", type="server_error", code="timeout")
    message = error or "generation failed"
    if message.startswith("LLM error:"):  # the LLM refused the request itself (a 4xx upstream)
        return OpenAIError(400, message, code="upstream_refused")
    return OpenAIError(502, message, type="server_error", code="upstream_error")


def _response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def _convert(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        metrics.REJECTED.labels("validation").inc()
        return validation_error(list(exc.errors()))
    if isinstance(exc, BrokerUnavailable):
        metrics.REJECTED.labels("broker_unavailable").inc()
        return OpenAIError(
            503, f"the message broker is unavailable: {exc}", type="server_error",
            code="broker_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    if isinstance(exc, APIError):
        metrics.REJECTED.labels("validation" if exc.code == "validation_error" else exc.code).inc()
        return OpenAIError(
            400 if exc.status == 422 else exc.status, exc.message, param=exc.extra.get("param"),
            code=exc.code, headers=exc.headers,
        )
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return OpenAIError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {}))
    raise TypeError(f"no OpenAI mapping for {type(exc).__name__}")


def install(app: FastAPI) -> None:
    """Answer errors on ``/v1`` paths with OpenAI's object; call after ``errors.install``."""
    for cls in (RequestValidationError, BrokerUnavailable, APIError, StarletteHTTPException, OpenAIError):
        native = app.exception_handlers.get(cls)

        async def handler(request: Request, exc: Exception, native=native) -> Any:
            if request.url.path.startswith(PREFIX) or native is None:
                return _response(_convert(exc))
            return await native(request, exc)

        app.add_exception_handler(cls, handler)
