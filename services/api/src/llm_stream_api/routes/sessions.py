"""Sessions as resources: cancel one from any replica.

Cancelling is idempotent. A running generation is stopped (its upstream request closed), a
queued task is dropped without calling the LLM, and every reader gets ``{"type": "cancelled"}``.
A session that has already ended stays as it was, and the answer says so.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from mqcommon.schemas import SESSION_ID_PATTERN

from llm_stream_api.deps import KeyDep, SessionsDep
from llm_stream_api.dialects import NativeRoute
from llm_stream_api.openapi.responses import CANCEL_ERRORS
from llm_stream_api.protocol.errors import NotFound
from llm_stream_api.protocol.native import CancelResult
from llm_stream_api.service.sessions import SessionService

router = APIRouter(route_class=NativeRoute)

SessionPath = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="The session's id.")]

CANCEL_RESPONSES = {
    200: {"model": CancelResult, "description": "The session has ended: cancelled now, or before."},
    202: {"model": CancelResult, "description": "Still queued: it ends cancelled when a worker takes it."},
    **CANCEL_ERRORS,
}


async def _cancel(session_id: str, sessions: SessionService, key: str | None) -> JSONResponse:
    outcome = await sessions.cancel(session_id, key)
    if outcome.status == "not_found":
        raise NotFound(f"session {session_id!r} not found")
    body = CancelResult.model_validate(
        {"session_id": session_id, "status": outcome.status, "end": outcome.end}
    )
    return JSONResponse(body.model_dump(), status_code=202 if outcome.status == "cancelling" else 200)


@router.delete(
    "/sessions/{session_id}", summary="Cancel a session", response_model=CancelResult,
    responses=CANCEL_RESPONSES,
)
async def delete_session(session_id: SessionPath, sessions: SessionsDep, key: KeyDep) -> JSONResponse:
    return await _cancel(session_id, sessions, key)


@router.post(
    "/sessions/{session_id}/cancel", summary="Cancel a session (same as DELETE)",
    response_model=CancelResult, responses=CANCEL_RESPONSES,
)
async def cancel_session(session_id: SessionPath, sessions: SessionsDep, key: KeyDep) -> JSONResponse:
    return await _cancel(session_id, sessions, key)
