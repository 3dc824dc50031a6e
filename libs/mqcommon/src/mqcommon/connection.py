"""Robust, named broker connections, to one address or to a list of cluster nodes.

The connection name (shown in the management UI) says which process holds it; the reconnect
interval is shortened from aio-pika's fixed 5 s so a broker blip costs about a second.

``RABBIT_MQ`` is one AMQP URL (a load-balanced address such as a Kubernetes Service, the
preferred setup) or several, separated by commas: the nodes of a cluster, for users without a
balancer. With several, each process starts on a node picked at random (so processes spread
over the nodes) and every reconnect, and every failed attempt, moves on to the next node.

A node can hang (a GC pause, a frozen VM, a saturated disk) with its TCP connections open:
AMQP heartbeats notice only after three missed intervals. ``watch_for_stalls`` asks the node
a cheap question every second on a channel of its own; a node that does not answer within
``stall_s`` has its connection closed, and the robust connection reconnects elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

log = structlog.get_logger(__name__)

STALL_PROBE_INTERVAL_S = 1.0
STALL_STEP_S = 0.25


def node_urls(urls: str) -> list[str]:
    """The AMQP URLs of ``RABBIT_MQ``: one, or several separated by commas."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def redacted(urls: str) -> str:
    """``RABBIT_MQ`` for a log line: each node's address without its credentials."""
    return ",".join(url.rsplit("@", 1)[-1] for url in node_urls(urls))


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


class NodeListConnection(RobustConnection):
    """A robust connection that moves to the next node of its list on every reconnect."""

    def __init__(self, urls: list[str], first: int, **kwargs: Any) -> None:
        self._nodes = [URL(url) for url in urls]
        self._node = first % len(self._nodes)
        super().__init__(self._nodes[self._node], **kwargs)

    # aio-pika reads ``url`` for every attempt; it is the current node's.
    @property
    def url(self) -> URL:
        return self._nodes[self._node]

    @url.setter
    def url(self, value: URL | str) -> None:  # aio-pika sets it (at start, on a new secret)
        self._nodes[self._node] = URL(value)

    def next_node(self) -> None:
        self._node = (self._node + 1) % len(self._nodes)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        self.next_node()
        await super()._on_connection_close(closing)

    async def _RobustConnection__connect_transport(self) -> None:  # a failed attempt moves on too
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except BaseException:
            self.next_node()
            raise


async def connect(
    urls: str,
    role: str,
    *,
    reconnect_interval_s: float = 1.0,
    heartbeat_s: int = 30,
) -> AbstractRobustConnection:
    """Open a robust connection to ``urls`` (``RABBIT_MQ``: one URL, or a cluster's nodes);
    raises if no node is reachable right now."""
    name = process_name(role)
    nodes = [connection_url(url, name, heartbeat_s=heartbeat_s) for url in node_urls(urls)]
    if len(nodes) == 1:
        return await aio_pika.connect_robust(
            nodes[0], reconnect_interval=reconnect_interval_s, fail_fast=True
        )
    first = random.randrange(len(nodes))
    error: BaseException | None = None
    for attempt in range(len(nodes)):
        connection = NodeListConnection(
            nodes, first + attempt, reconnect_interval=reconnect_interval_s, fail_fast=True
        )
        try:
            await connection.connect()
            return connection
        except (ConnectionError, OSError, aio_pika.exceptions.AMQPError) as exc:
            error = exc
            with contextlib.suppress(Exception):
                await connection.close()
    assert error is not None
    raise error


async def watch_for_stalls(
    connection: AbstractRobustConnection,
    stall_s: float,
    *,
    on_stall: Callable[[], None] = lambda: None,
) -> None:
    """Close ``connection`` when its node stops answering for ``stall_s`` (runs until cancelled).

    The question is a passive declaration of ``amq.direct``: the node answers it from its own
    metadata, whatever the state of queue leaders elsewhere in the cluster. It is asked only
    once the node has been silent for a probe interval: a connection that receives anything
    (deliveries, watermarks, heartbeats) costs no question at all."""
    probe: Any = None  # one channel per transport, kept open
    while True:
        await asyncio.sleep(STALL_PROBE_INTERVAL_S)
        transport = connection.transport
        if connection.is_closed or transport is None or not connection.connected.is_set():
            continue  # reconnecting: nothing to watch yet
        underlay = transport.connection
        if _silence(underlay)() < STALL_PROBE_INTERVAL_S:
            continue  # the node sent something within the last interval: it is not hung
        try:
            if probe is None or probe.connection is not underlay or probe.is_closed:
                opening = asyncio.ensure_future(underlay.channel())
                answered = await _answers_within(opening, stall_s, _silence(underlay))
                probe = opening.result() if answered else None
            if probe is not None:
                answered = await _answers_within(
                    probe.exchange_declare("amq.direct", exchange_type="direct", passive=True), stall_s,
                    _silence(underlay),
                )
        except Exception as exc:  # a closing connection: the robust connection handles it
            log.debug("stall probe failed", error=str(exc) or type(exc).__name__)
            continue
        if not answered:
            log.warning("the broker node stopped answering; reconnecting", stall_s=stall_s)
            on_stall()
            # Closing the transport (not the robust connection) makes aio-pika reconnect. A
            # graceful close would wait for the hung node to read (forever, once the socket's
            # buffer is full): marked as a peer gone silent, aiormq aborts the socket instead,
            # as it does when heartbeats stop.
            underlay._Connection__last_frame_time = float("-inf")  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                await underlay.close(ConnectionError("the broker node stalled"))


async def _answers_within(
    question: Awaitable[Any], stall_s: float, silent_for: Callable[[], float] = lambda: float("inf"),
) -> bool:
    """Whether ``question`` is answered before the node has been silent for ``stall_s``.

    Silence is counted two ways, and both must reach ``stall_s``: the time this process
    listened without an answer (time the event loop itself was late, a busy process or a long
    GC, does not count against the node), and ``silent_for``, the time since the node last sent
    anything at all. A node busy sending deliveries answers late but is not hung."""
    asked = asyncio.ensure_future(question)
    loop = asyncio.get_running_loop()
    waited = 0.0
    while not asked.done():
        began = loop.time()
        await asyncio.wait({asked}, timeout=STALL_STEP_S)
        waited += min(loop.time() - began, 2 * STALL_STEP_S)
        if waited >= stall_s and not asked.done() and silent_for() >= stall_s:
            asked.cancel()
            return False
    asked.result()  # a failure, not a silence: raised
    return True


def _silence(underlay: Any) -> Callable[[], float]:
    """Seconds since the connection last received a frame (aiormq keeps the time)."""
    loop = asyncio.get_running_loop()
    return lambda: loop.time() - getattr(underlay, "_Connection__last_frame_time", float("-inf"))


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
