"""Robust, named broker connections.

The connection name (shown in the management UI) says which process holds it; the reconnect
interval is shortened from aio-pika's fixed 5 s so a broker blip costs about a second.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection


def connection_url(url: str, name: str, *, heartbeat_s: int = 30) -> str:
    """Add a connection name and heartbeat to an AMQP URL, keeping options already there."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("name", name)
    query.setdefault("heartbeat", str(heartbeat_s))
    return urlunsplit(parts._replace(query=urlencode(query)))


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``); None where that cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as uptime:
            up = float(uptime.read().split()[0])
        return max(0.0, up - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def process_name(role: str) -> str:
    return f"llm-stream-{role}@{socket.gethostname()}:{os.getpid()}"


async def connect(url: str, role: str, *, reconnect_interval_s: float = 1.0) -> AbstractRobustConnection:
    """Open a robust connection; raises if the broker is unreachable right now."""
    return await aio_pika.connect_robust(
        connection_url(url, process_name(role)),
        reconnect_interval=reconnect_interval_s,
        fail_fast=True,
    )


def broker_version(connection: AbstractRobustConnection) -> tuple[int, ...]:
    """The broker's version as announced when the connection opened, e.g. ``(4, 0, 5)``."""
    transport = connection.transport
    underlay = transport.connection if transport is not None else None
    properties = getattr(underlay, "server_properties", None) or {}
    raw = properties.get("version", b"0")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)
