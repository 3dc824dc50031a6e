"""The FastAPI application: wiring, lifespan and request metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from mqcommon.gc import freeze_startup_heap
from mqcommon.logging import setup_logging
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_stream_api import chat, errors, metrics, openai_errors, openapi, ops
from llm_stream_api.auth import Authenticate, KeyRing
from llm_stream_api.broker import Broker
from llm_stream_api.hub import SessionHub
from llm_stream_api.rate_limits import KeyLimits
from llm_stream_api.routes import models as model_routes
from llm_stream_api.routes import openai_chat, openai_responses, sessions
from llm_stream_api.settings import APISettings
from llm_stream_api.workers import WorkerRegistry, WorkerWatch

log = structlog.get_logger("llm_stream_api")


class RequestMetrics:
    """Count requests by route template; time them to the response headers.

    A plain ASGI middleware: it never buffers a streaming body and never hides a client
    disconnect from the route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                metrics.HTTP_DURATION.labels(_route(scope), scope["method"]).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.HTTP_REQUESTS.labels(_route(scope), scope["method"], str(status)).inc()
            structlog.contextvars.clear_contextvars()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


CORS_EXPOSE_HEADERS = ["X-Session-ID", "X-Trace-ID", "Retry-After"]


def create_app(settings: APISettings | None = None) -> FastAPI:
    settings = settings or APISettings()
    # A key file that cannot be read or parsed stops the start-up, with the line at fault.
    keys = KeyRing.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
    key_limits = KeyLimits(
        requests_per_minute=settings.key_requests_per_minute,
        max_sessions=settings.key_max_sessions,
        tokens_per_minute=settings.key_tokens_per_minute,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.log_level, settings.log_format, service="api")
        hub = SessionHub(
            ttl_s=settings.session_ttl_s,
            max_sessions=settings.max_sessions,
            max_bytes=settings.session_max_bytes,
        )
        broker = Broker(settings, hub)
        app.state.settings, app.state.hub, app.state.broker = settings, hub, broker
        clients: list = []

        def llm_client():
            if not clients:
                from mqcommon.llm import make_client  # the SDK costs a second of start-up

                clients.append(make_client(settings))
            return clients[0]

        app.state.llm_client = llm_client
        if settings.chat_direct_llm:
            import mqcommon.llm  # noqa: F401  (direct mode answers with the SDK: load it now, not on a request)
        app.state.collectors = [
            metrics.QueueDepthCollector(
                settings.rabbitmq_management_url,
                {"tasks": settings.task_queue, "dead_letter": settings.dead_letter_queue},
                passive=metrics.PassiveDepth(lambda: broker._connection),
            ),
        ]
        registry = WorkerRegistry(settings.task_queue)
        app.state.workers = registry
        # On the broker's own connection, once it is up (one connection per process).
        watch = WorkerWatch(broker.topology, lambda: broker._connection, registry)
        await broker.start()
        watch.start()
        await broker.wait_ready(timeout=3.0)
        freeze_startup_heap()
        log.info(
            "api started", port=settings.port, direct_llm=settings.chat_direct_llm,
            api_keys=keys.ids if keys.enabled else "off",
        )
        try:
            yield
        finally:
            await watch.stop()
            await broker.stop()
            for client in clients:
                await client.close()

    app = FastAPI(
        title="llm-stream",
        version="0.1.0",
        summary="Stream LLM answers through RabbitMQ to many clients at once.",
        lifespan=lifespan,
        # Metrics and trace ids are the service's own (Prometheus, W3C traceparent); FastAPI's
        # built-in OpenTelemetry hooks would cost every request a provider lookup.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.key_limits = key_limits
    if keys.enabled:
        # Innermost: CORS answers preflights without a key, and refusals are counted.
        app.add_middleware(
            Authenticate, keys=keys, probes_open=settings.api_keys_open_probes,
            limits=key_limits,
        )
    app.add_middleware(RequestMetrics)
    if settings.cors_origins:
        # A plain ASGI middleware too, so streaming routes keep seeing disconnects.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=settings.cors_max_age_s,
        )
    errors.install(app)
    openai_errors.install(app)
    app.include_router(chat.router)
    app.include_router(ops.router)
    app.include_router(openai_chat.router)
    app.include_router(openai_responses.router)
    app.include_router(model_routes.router)
    app.include_router(sessions.router)
    openapi.install(app, settings)
    # The chat page's vendored libraries (static/vendor/README.md); the page itself is at /.
    app.mount("/static", StaticFiles(packages=[("llm_stream_api", "static")]), name="static")
    return app


app = create_app()
