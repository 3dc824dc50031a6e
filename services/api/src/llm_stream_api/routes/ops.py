"""Operational routes: health, readiness, statistics, LLM check, metrics, the chat page."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from mqcommon.errors import BrokerUnavailable, UpstreamError

from llm_stream_api import metrics
from llm_stream_api.deps import AppState, StateDep
from llm_stream_api.dialects import NativeRoute
from llm_stream_api.openapi.responses import BROKER_UNAVAILABLE
from llm_stream_api.protocol.errors import RETRY_AFTER_S
from llm_stream_api.protocol.native import HealthFull, LLMCheck, Stats
from llm_stream_api.settings import APISettings

router = APIRouter(route_class=NativeRoute)


def _test_content(text_pattern: str) -> dict[str, Any]:
    return {
        "text/plain": {"schema": {"type": "string", "pattern": text_pattern}},
        "application/json": {"schema": LLMCheck.model_json_schema()},
    }

LLM_CHECK_TIMEOUT_S = 10.0
TEST_PROMPT = "Say 'test successful' and nothing else."
TEST_MAX_TOKENS = 16


def _llm_state(state: AppState) -> dict[str, str | int]:
    """Whether an LLM is configured where generations run, never the key itself.

    In direct mode the API calls the LLM, so its own settings decide; otherwise the workers
    do, and their heartbeats say whether any of them has a key or a base URL.
    """
    settings, workers = state.settings, state.workers.summary()
    if settings.chat_direct_llm:
        configured, mode = bool(settings.openai_api_key or settings.openai_base_url), "direct"
    else:
        configured, mode = workers.llm_configured, "via_workers"
    return {"openai": "configured" if configured else "missing", "llm": mode, "workers": workers.count}


def _pools(state: AppState) -> dict[str, dict[str, Any]]:
    """Each pool as configured (models, lanes) beside what its workers' heartbeats say."""
    out = {}
    for name, pool in state.pools.pools.items():
        beats = [beat for beat in state.workers.alive() if state.workers.pools.get(beat.queue) == name]
        upstream = {beat.upstream for beat in beats}
        out[name] = {
            "models": list(pool.models) + list(pool.aliases),
            "lanes": list(pool.lanes),
            "queue": state.pools.queue(name),
            "workers": len(beats),
            "concurrency": sum(beat.concurrency for beat in beats),
            "running": sum(beat.running for beat in beats),
            "openai": "configured" if any(beat.llm_configured for beat in beats) else "missing",
            # failing once any worker's last generation failed; ok once one answered
            "upstream": "failing" if "failing" in upstream else "ok" if "ok" in upstream else "unknown",
            "worker_start_s": state.workers.start_estimate(name),
        }
    return out


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/health/full", summary="Readiness: the broker connection is up",
    responses={
        200: {"model": HealthFull, "description": "Ready."},
        503: {"model": HealthFull, "description": "Degraded: not connected to the broker."},
    },
)
async def health_full(state: StateDep) -> JSONResponse:
    connected = state.sessions.broker.connected
    body = {
        "status": "ok" if connected else "degraded",
        "rabbitmq": "connected" if connected else "disconnected",
        **_llm_state(state),
        "sessions": len(state.sessions.hub),
        "pools": _pools(state),
    }
    return JSONResponse(body, status_code=200 if connected else 503)


@router.get(
    "/stats", summary="Task queue statistics",
    responses={200: {"model": Stats, "description": "Statistics."}, 503: BROKER_UNAVAILABLE},
)
async def stats(state: StateDep) -> JSONResponse:
    hub, workers = state.sessions.hub, state.workers.summary()
    try:
        queue = await state.depth.task_queue()
    except BrokerUnavailable as exc:
        return JSONResponse(
            {"status": "error", "error": "broker_unavailable", "message": str(exc),
             "queue": state.pools.queue(state.pools.default.name), "pending_tasks": None},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return JSONResponse(
        {
            "status": "ok",
            "queue": state.pools.queue(state.pools.default.name),
            "pending_tasks": queue.messages,
            "consumers": queue.consumers,
            "open_streams": len(hub.served_sessions()),
            "sessions": len(hub),
            "workers": workers.count,
            "worker_concurrency": workers.concurrency,
            "generations_running": workers.running,
        }
    )


@router.get(
    "/test", summary="Check the LLM from the API: a tiny completion, or a model list as JSON",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "The LLM answered.", "content": _test_content("^OK: ")},
        503: {"description": "The LLM cannot be reached.", "content": _test_content("^ERROR: ")},
    },
)
async def test(request: Request, state: StateDep) -> Response:
    """``text/plain`` ``OK: <reply>`` / ``ERROR: <why>`` (the old contract) by default; with
    ``Accept: application/json`` the model list as JSON."""
    settings, client = state.settings, state.llm_client()
    base_url = settings.openai_base_url or "https://api.openai.com/v1"
    if "application/json" not in request.headers.get("accept", ""):
        return await _test_completion(client, settings)
    from mqcommon.llm import check_connection  # the SDK is imported when first needed

    try:
        async with asyncio.timeout(LLM_CHECK_TIMEOUT_S):
            models = await check_connection(client)
    except (UpstreamError, TimeoutError) as exc:
        return JSONResponse(
            {"status": "error", "error": "llm_unreachable", "message": str(exc) or "timed out",
             "base_url": base_url},
            status_code=503,
        )
    return JSONResponse(
        {"status": "ok", "model": settings.llm_model, "model_available": settings.llm_model in models,
         "models": models[:20], "base_url": base_url}
    )


async def _test_completion(client: Any, settings: APISettings) -> PlainTextResponse:
    from mqcommon.llm import stream_answer  # the SDK is imported when first needed

    tiny = settings.model_copy(update={"llm_max_tokens": TEST_MAX_TOKENS, "system_prompt": ""})
    pieces: list[str] = []
    try:
        async with asyncio.timeout(LLM_CHECK_TIMEOUT_S):
            async for text in stream_answer(client, tiny, TEST_PROMPT):
                pieces.append(text)
    except (UpstreamError, TimeoutError) as exc:
        why = str(exc) or f"no answer within {LLM_CHECK_TIMEOUT_S:g}s"
        return PlainTextResponse(f"ERROR: {why}", status_code=503)
    return PlainTextResponse(f"OK: {''.join(pieces).strip()}")


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(state: StateDep) -> Response:
    body, content_type = await asyncio.to_thread(metrics.exposition, state.collectors)
    return Response(body, media_type=content_type)


@router.get("/", include_in_schema=False)
@router.get("/chat.html", include_in_schema=False)
async def chat_page() -> HTMLResponse:
    page = resources.files("llm_stream_api").joinpath("static/chat.html").read_text("utf-8")
    return HTMLResponse(page)
