"""The native dialect's errors: ``{"error": "<code>", "message": "<what is wrong>", ...}``, so
a client can branch on ``error`` and show ``message``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from llm_stream_api.protocol.errors import APIError


def body(error: APIError) -> dict[str, Any]:
    param = {"param": error.param} if error.param is not None else {}
    return {"error": error.code or "bad_request", "message": error.message, **param, **error.extra}


def render(error: APIError) -> JSONResponse:
    return JSONResponse(body(error), status_code=error.status, headers=error.headers or None)


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """FastAPI's or pydantic's validation failure: 422 listing each problem, or 400 for JSON
    that does not parse."""
    problems = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in errors]
    if any(err.get("type") == "json_invalid" for err in problems):
        return APIError(400, "invalid_json", "request body is not valid JSON")
    return APIError(422, "validation_error", _describe(problems), detail=problems)


def _describe(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
