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

RETRY_AFTER_S = 5


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class SessionConflict(APIError):
    def __init__(self, session_id: str) -> None:
        super().__init__(409, "conflict", f"session_id {session_id!r} is already in use")


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body is larger than {limit} bytes")


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
        return JSONResponse(error_body(exc.code, exc.message, **exc.extra), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )
