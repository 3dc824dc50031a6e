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

from llm_stream_api.auth import KeyDep
from llm_stream_api.broker import YOUNG_GRACE_S
from llm_stream_api.deps import BrokerDep, HubDep
from llm_stream_api.errors import BROKER_UNAVAILABLE, APIError, _error
from llm_stream_api.models import CancelResult
from llm_stream_api.ownership import owns

router = APIRouter()

SessionPath = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="The session's id.")]

CANCEL_RESPONSES = {
    200: {"model": CancelResult, "description": "The session has ended: cancelled now, or before."},
    202: {"model": CancelResult, "description": "Still queued: it ends cancelled when a worker takes it."},
    404: _error("`not_found`: no replica and no worker knows this session (or, with API keys "
                "on, another key created it)."),
    422: _error("`validation_error`: the session id is not valid."),
    503: BROKER_UNAVAILABLE,
}


async def _cancel(session_id: str, broker: BrokerDep, hub: HubDep, key: str | None) -> JSONResponse:
    # Another key's session is not found, and is left running: one client cannot stop another's.
    wait_s = YOUNG_GRACE_S + broker.settings.history_timeout_s
    if key is not None and not await owns(hub, broker, session_id, key, wait_s=wait_s):
        raise APIError(404, "not_found", f"session {session_id!r} not found")
    outcome = await broker.cancel(session_id)
    if outcome.status == "not_found":
        raise APIError(404, "not_found", f"session {session_id!r} not found")
    body = CancelResult(session_id=session_id, status=outcome.status, end=outcome.end)
    return JSONResponse(body.model_dump(), status_code=202 if outcome.status == "cancelling" else 200)


@router.delete(
    "/sessions/{session_id}", summary="Cancel a session", response_model=CancelResult,
    responses=CANCEL_RESPONSES,
)
async def delete_session(
    session_id: SessionPath, broker: BrokerDep, hub: HubDep, key: KeyDep
) -> JSONResponse:
    return await _cancel(session_id, broker, hub, key)


@router.post(
    "/sessions/{session_id}/cancel", summary="Cancel a session (same as DELETE)",
    response_model=CancelResult, responses=CANCEL_RESPONSES,
)
async def cancel_session(
    session_id: SessionPath, broker: BrokerDep, hub: HubDep, key: KeyDep
) -> JSONResponse:
    return await _cancel(session_id, broker, hub, key)
