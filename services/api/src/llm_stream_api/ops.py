"""Operational routes: health, readiness, statistics, LLM check, metrics, the chat page."""

from __future__ import annotations

import asyncio
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from mqcommon.errors import BrokerUnavailable, UpstreamError
from mqcommon.llm import check_connection

from llm_stream_api import metrics
from llm_stream_api.deps import BrokerDep, HubDep, SettingsDep
from llm_stream_api.errors import RETRY_AFTER_S

router = APIRouter()

LLM_CHECK_TIMEOUT_S = 10.0


def _llm_mode(settings) -> str:
    if settings.chat_direct_llm:
        return "configured" if (settings.openai_api_key or settings.openai_base_url) else "missing_key"
    return "via_workers"


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/full", summary="Readiness: the broker connection is up")
async def health_full(settings: SettingsDep, broker: BrokerDep, hub: HubDep) -> JSONResponse:
    connected = broker.connected
    body = {
        "status": "ok" if connected else "degraded",
        "rabbitmq": "connected" if connected else "disconnected",
        "openai": _llm_mode(settings),
        "sessions": len(hub),
    }
    return JSONResponse(body, status_code=200 if connected else 503)


@router.get("/stats", summary="Task queue statistics")
async def stats(settings: SettingsDep, broker: BrokerDep, hub: HubDep) -> JSONResponse:
    try:
        queue = await broker.queue_stats()
    except BrokerUnavailable as exc:
        return JSONResponse(
            {"status": "error", "error": "broker_unavailable", "message": str(exc),
             "queue": settings.task_queue, "pending_tasks": None},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return JSONResponse(
        {
            "status": "ok",
            "queue": settings.task_queue,
            "pending_tasks": queue["messages"],
            "consumers": queue["consumers"],
            "open_streams": len(hub.served_sessions()),
            "sessions": len(hub),
        }
    )


@router.get("/test", summary="Check the connection to the LLM")
async def test(request: Request, settings: SettingsDep) -> JSONResponse:
    client = request.app.state.llm_client()
    try:
        async with asyncio.timeout(LLM_CHECK_TIMEOUT_S):
            models = await check_connection(client)
    except (UpstreamError, TimeoutError) as exc:
        return JSONResponse(
            {"status": "error", "error": "llm_unreachable", "message": str(exc) or "timed out",
             "base_url": settings.openai_base_url or "https://api.openai.com/v1"},
            status_code=503,
        )
    return JSONResponse(
        {"status": "ok", "model": settings.llm_model, "model_available": settings.llm_model in models,
         "models": models[:20], "base_url": settings.openai_base_url or "https://api.openai.com/v1"}
    )


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    body, content_type = await asyncio.to_thread(metrics.exposition, request.app.state.collectors)
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
@router.get("/chat.html", include_in_schema=False)
async def chat_page() -> HTMLResponse:
    page = resources.files("llm_stream_api").joinpath("static/chat.html").read_text("utf-8")
    return HTMLResponse(page)
