"""Run the mock inside another program's event loop (tests, benchmarks, other services' tests).

async with serve_in_background(Settings(port=0, ttft_ms=20)) as base_url:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="mock")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from llm_stream_mockllm.server import MockLLM
from llm_stream_mockllm.settings import Settings

_STARTUP_TIMEOUT_S = 10.0


def uvicorn_config(settings: Settings, *, embedded: bool = False) -> uvicorn.Config:
    """The uvicorn configuration of the mock: httptools, no websockets, no access log.

    The keep-alive timeout is longer than clients' pool expiry (httpx: 5 s), so that the client
    always closes an idle connection first and never reuses one the server is closing.
    """
    return uvicorn.Config(
        MockLLM(settings),
        host=settings.host,
        port=settings.port,
        loop="none" if embedded else "uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_level=settings.log_level,
        log_config=None if embedded else LOGGING_CONFIG,
        access_log=settings.log_level in ("debug", "trace"),
        server_header=False,
        proxy_headers=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
    )


@contextlib.asynccontextmanager
async def serve_in_background(settings: Settings) -> AsyncIterator[str]:
    """Serve the mock in the running loop; yield its base URL (``http://host:port``).

    ``settings.port`` 0 picks a free port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn_config(settings, embedded=True))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(_STARTUP_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()  # re-raise what stopped the server
                    raise RuntimeError("mock LLM server stopped during start-up")
                await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT_S):
                await task
        finally:
            sock.close()
