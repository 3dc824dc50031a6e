"""The OpenAI dialect's errors: OpenAI's error object, so the official SDKs raise their own
classes (``BadRequestError``, ``NotFoundError``, ...) with our message.

    400  invalid_request_error  bad JSON, an invalid field, a parameter we cannot honour,
                                an input limit (``limit_exceeded``, ``model_not_allowed``)
    401  authentication_error   no key, or an unknown one
    404  not_found_error        unknown path, unknown response id or model
    405  invalid_request_error  wrong method
    413  invalid_request_error  body over MAX_BODY_BYTES
    429  rate_limit_error       past one of the key's limits (with Retry-After)
    503  server_error           broker unavailable, overloaded (with Retry-After, which the SDKs honour)
    502/504                     the LLM failed or timed out (non-streamed answers)
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from llm_stream_api.protocol.errors import APIError, OpenAIError
from llm_stream_api.protocol.openai_base import error_object, openai_status
from llm_stream_api.sessions.hub import CANCELLED, TIMEOUT


def render(error: APIError) -> JSONResponse:
    return JSONResponse(error_object(error), status_code=openai_status(error), headers=error.headers or None)


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


def end_error(kind: str, error: str | None, param: str | None = None) -> OpenAIError:
    """How a session that did not end ``done`` is reported; ``param``: the request field the
    LLM named when it refused the request."""
    if kind == CANCELLED:
        return OpenAIError(400, "the request was cancelled", code="cancelled")
    if kind == TIMEOUT:
        return OpenAIError(504, error or "timed out", type="server_error", code="timeout")
    message = error or "generation failed"
    if message.startswith("LLM error:"):  # the LLM refused the request itself (a 4xx upstream)
        return OpenAIError(400, message, param=param, code="upstream_refused")
    return OpenAIError(502, message, type="server_error", code="upstream_error")
