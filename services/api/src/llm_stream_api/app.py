"""The FastAPI application: what is built at start-up, and how it is wired together.

The lifespan builds the parts once (the broker connection and what runs on it, the session
hub, the session service) and keeps them in one typed ``AppState`` (``deps``). Middleware is
plain ASGI (``middleware/``), errors are written in the dialect of their route (``dialects``),
and the routes (``routes/``) only translate HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI
from mqcommon.connection import process_name
from mqcommon.gc import freeze_startup_heap
from mqcommon.logging import setup_logging
from mqcommon.pools import PoolMap
from mqcommon.topology import Topology
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from llm_stream_api import dialects
from llm_stream_api.broker.connection import BrokerConnection
from llm_stream_api.broker.heartbeats import WorkerRegistry, WorkerWatch
from llm_stream_api.broker.history import History
from llm_stream_api.broker.intake import Intake
from llm_stream_api.broker.lines import Lines
from llm_stream_api.broker.live import LiveFeed
from llm_stream_api.broker.presence import PresenceAnnouncer
from llm_stream_api.broker.queue_depth import QueueDepth, QueueDepthCollector, WatchedQueue
from llm_stream_api.deps import AppState, set_state
from llm_stream_api.keys import KeyRing
from llm_stream_api.llm_clients import LLMClients
from llm_stream_api.middleware.authenticate import Authenticate
from llm_stream_api.middleware.request_metrics import RequestMetrics
from llm_stream_api.openapi import document
from llm_stream_api.quota.admission import StreamCount
from llm_stream_api.quota.key_limits import KeyLimits
from llm_stream_api.quota.service_tiers import TierPolicy
from llm_stream_api.routes import chat, openai_chat, openai_models, openai_responses, ops, sessions
from llm_stream_api.service.sessions import SessionService
from llm_stream_api.service.stored import StoredConversations
from llm_stream_api.sessions.hub import SessionHub
from llm_stream_api.settings import APISettings

log = structlog.get_logger("llm_stream_api")

CORS_EXPOSE_HEADERS = ["X-Session-ID", "X-Trace-ID", "Retry-After"]
STREAM_FILTERING_SINCE = (3, 13)


def build(
    settings: APISettings, key_limits: KeyLimits, pools: PoolMap, tiers: TierPolicy,
) -> tuple[AppState, BrokerConnection, WorkerWatch]:
    """Every part of a replica, connected to each other (nothing started yet)."""
    hub = SessionHub(
        ttl_s=settings.session_ttl_s, max_sessions=settings.max_sessions,
        max_bytes=settings.session_max_bytes,
    )
    replica_id = f"{process_name('api')}:{uuid.uuid4().hex[:8]}"
    default_line = pools.line_settings(settings, pools.line(pools.default.name))
    broker = BrokerConnection(settings, replica_id, Topology.from_settings(default_line))
    topology = broker.topology
    history = History(
        topology.events_stream, window_s=settings.session_ttl_s,
        timeout_s=settings.history_timeout_s, concurrency=settings.history_lookups_max,
    )
    depth = QueueDepth(broker)
    workers = WorkerRegistry({pools.queue(name): name for name in pools.pools})
    lines = Lines(broker, hub, pools, depth, workers)
    live = LiveFeed(
        hub, topology.live_exchange, replica_id, on_watch=lines.on_watch, on_positions=lines.on_positions,
    )

    async def start_readers(broker: BrokerConnection) -> None:
        connection, channel = broker.connection, broker.channel
        assert connection is not None and channel is not None
        await history.start(
            channel, await connection.channel(publisher_confirms=False), await connection.channel(),
            filtering=broker.version >= STREAM_FILTERING_SINCE, stream=broker.topology.events_stream,
        )
        await live.start(await connection.channel())
        await lines.start(await connection.channel())

    broker.when_connected(start_readers)
    service = SessionService(
        settings, hub, broker, replica_id=replica_id, intake=Intake(broker), history=history,
        lines=lines, presence=PresenceAnnouncer(broker, hub, replica_id),
        key_limits=key_limits, streams=StreamCount(), tiers=tiers,
    )
    lines.run_keepers()
    state = AppState(
        settings=settings, sessions=service, workers=workers,
        stored=StoredConversations(service.find, history, keep_s=settings.responses_store_s),
        depth=depth, llm_client=LLMClients(settings), pools=pools,
    )
    return state, broker, WorkerWatch(broker, workers)


def watched_queues(pools: PoolMap) -> list[WatchedQueue]:
    """Every task queue and dead-letter queue of the release, for the depth gauges."""
    queues = [
        WatchedQueue(queue, "tasks", line.pool, line.lane)
        for line in pools.lines() for queue in pools.shard_queues(line)
    ]
    queues += [WatchedQueue(pools.dead_letter_queue(name), "dead_letter", name) for name in pools.pools]
    return queues


def create_app(settings: APISettings | None = None) -> FastAPI:
    settings = settings or APISettings()
    # A key file that cannot be read or parsed stops the start-up, with the line at fault.
    keys = KeyRing.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
    # So do pools and service tiers that cannot be read, with what is wrong.
    pools = PoolMap.from_settings(settings)
    tiers = TierPolicy.parse(settings.key_service_tiers)
    key_limits = KeyLimits(
        requests_per_minute=settings.key_requests_per_minute,
        max_sessions=settings.key_max_sessions,
        tokens_per_minute=settings.key_tokens_per_minute,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_logging(settings.log_level, settings.log_format, service="api")
        state, broker, watch = build(settings, key_limits, pools, tiers)
        if settings.chat_direct_llm:
            import mqcommon.llm  # noqa: F401  (direct mode answers with the SDK: load it now, not on a request)
        state.depth.bind_loop()
        state.collectors.append(
            QueueDepthCollector(
                settings.rabbitmq_management_url, watched_queues(pools), passive=state.depth.read_blocking,
            )
        )
        set_state(app, state)
        await broker.start()
        state.sessions.start()
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
            await state.sessions.stop()
            await broker.stop()
            await state.llm_client.close()

    app = FastAPI(
        title="llm-stream",
        version="0.1.0",
        summary="Stream LLM answers through RabbitMQ to many clients at once.",
        lifespan=lifespan,
        # Metrics and trace ids are the service's own (Prometheus, W3C traceparent); FastAPI's
        # built-in OpenTelemetry hooks would cost every request a provider lookup.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    modules = (chat, ops, openai_chat, openai_responses, openai_models, sessions)
    routers = [module.router for module in modules]
    routes = dialects.install(app, routers)
    for router in routers:
        app.include_router(router)
    if keys.enabled:
        # Innermost: CORS answers preflights without a key, and refusals are counted.
        app.add_middleware(
            Authenticate, keys=keys, probes_open=settings.api_keys_open_probes, limits=key_limits,
            routes=routes,
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
    document.install(app, settings, routes)
    # The chat page's vendored libraries (static/vendor/README.md); the page itself is at /.
    app.mount("/static", StaticFiles(packages=[("llm_stream_api", "static")]), name="static")
    return app


app = create_app()
