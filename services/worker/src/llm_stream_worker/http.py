"""A minimal HTTP endpoint for probes and scraping: ``/health`` and ``/metrics``.

The worker has no web framework; this serves the two paths Kubernetes and Prometheus need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def serve(host: str, port: int, is_ready: Callable[[], bool]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path in ("/health", "/healthz"):
                ready = is_ready()
                status = "200 OK" if ready else "503 Service Unavailable"
                ctype = "application/json"
                body = b'{"status": "ok"}' if ready else b'{"status": "degraded"}'
            else:
                status, ctype, body = "404 Not Found", "application/json", b'{"error": "not found"}'
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
