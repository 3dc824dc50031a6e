"""The cluster under a scenario: where each process sits, what moves after a fault, and the
cluster put back whole between scenarios.

The cluster is a ``BrokerCluster`` (``tests/support/rabbitmq_cluster.py``: the host's RabbitMQ
3.10, or RabbitMQ 4.0 in podman containers). Every client connection of the stack is named
``llm-stream-<role>@<host>:<pid>`` (``mqcommon.connection.process_name``), so the management
API says which node a process sits on. Its calls are blocking: the scenarios run them in
threads. While a node hangs, a peer's answers that gather from every node stall until the
node is declared down (up to ``net_ticktime``): every question here has a short timeout, and
a watch keeps asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
from support.rabbitmq_cluster import leader_name

from stack import Service

HTTP_TIMEOUT_S = 2.0
WATCH_EVERY_S = 0.5
HEALTH_EVERY_S = 0.1
PLACEMENT_TIMEOUT_S = 30.0
HEALTHY_TIMEOUT_S = 120.0
PARTITION_GRACE_S = 5.0
"""After a hang, how long a partition may take to heal by itself before the node's
application is restarted (``stop_app``, ``start_app``) to rejoin it."""


def role_of(service: Service) -> str:
    return "worker" if "-worker" in service.name else "api"


def connection_name(service: Service) -> str:
    """The name of the process's broker connection (``mqcommon.connection.process_name``)."""
    return f"llm-stream-{role_of(service)}@{socket.gethostname()}:{service.popen.pid}"


def _client(management_url: str, timeout: float = HTTP_TIMEOUT_S) -> httpx.Client:
    url = httpx.URL(management_url)
    return httpx.Client(
        base_url=str(url.copy_with(username=None, password=None)),
        auth=(url.username or "", url.password or ""),
        timeout=timeout,
        trust_env=False,
    )


def connections(management_url: str) -> dict[str, str]:
    """Connection name -> the Erlang name of its node, as one node's management API lists them."""
    with _client(management_url) as client:
        response = client.get("/api/connections")
    response.raise_for_status()
    found = {}
    for connection in response.json():
        name = connection.get("user_provided_name") or (
            connection.get("client_properties", {}).get("connection_name")
        )
        if name:
            found[str(name)] = str(connection["node"])
    return found


def queue_info(management_url: str, queue: str) -> dict[str, Any] | None:
    with _client(management_url) as client:
        response = client.get(f"/api/queues/%2F/{quote(queue, safe='')}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


def up(cluster: Any) -> list[Any]:
    """The nodes the cluster left up (not killed, paused, stopped or cut off)."""
    partitioned = getattr(cluster, "partitioned", lambda node: False)
    return [n for n in cluster.nodes if cluster.state(n) == "up" and not partitioned(n)]


def ask_first(urls: list[str], question: Callable[[str], Any]) -> Any:
    """``question`` of the first management URL that answers it; the last error if none does."""
    error: Exception | None = None
    for url in urls:
        try:
            return question(url)
        except (httpx.HTTPError, OSError, ValueError) as exc:
            error = exc
    raise error or RuntimeError("no management URL to ask")


# -- where the processes sit -----------------------------------------------------------------


async def placement(
    cluster: Any, services: list[Service], timeout: float = PLACEMENT_TIMEOUT_S
) -> dict[str, str]:
    """Service name -> the node its connection sits on, once every one is seen."""
    names = {connection_name(s): s.name for s in services}
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        urls = [n.management_url for n in up(cluster)]
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, RuntimeError):
            listed = await asyncio.to_thread(ask_first, urls, connections)
            seen = {names[c]: node for c, node in listed.items() if c in names}
        if len(seen) == len(services):
            return seen
        if time.monotonic() > deadline:
            missing = sorted(set(names.values()) - set(seen))
            raise RuntimeError(f"connections not seen on the broker within {timeout:g} s: {missing}")
        await asyncio.sleep(WATCH_EVERY_S)


@dataclass
class ConnectionWatch:
    """Every ``WATCH_EVERY_S``, the node of each process's connection (None: not seen),
    asked of the nodes in ``ask`` (those not faulted)."""

    services: list[Service]
    ask: list[str]
    seen: list[tuple[float, str, str | None]] = field(default_factory=list)
    """(when, service name, node): each change."""
    unanswered: list[tuple[float, str]] = field(default_factory=list)
    """(when, why) of each round that no node answered."""
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        names = {connection_name(s): s.name for s in self.services}
        last: dict[str, str | None] = {}
        while True:
            try:
                listed = await asyncio.to_thread(ask_first, self.ask, connections)
            except (httpx.HTTPError, OSError, ValueError, RuntimeError) as exc:
                self.unanswered.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:120]))
                listed = None
            if listed is not None:
                now = time.monotonic()
                where = {name: None for name in names.values()} | {
                    names[c]: node for c, node in listed.items() if c in names
                }
                for name, node in where.items():
                    if name not in last or last[name] != node:
                        self.seen.append((now, name, node))
                        last[name] = node
            await asyncio.sleep(WATCH_EVERY_S)

    def moved(self, name: str, away_from: str, after: float) -> tuple[float, str] | None:
        """When ``name`` was first seen on another node than ``away_from`` after ``after``."""
        for at, service, node in self.seen:
            if service == name and at >= after and node is not None and node != away_from:
                return at, node
        return None


@dataclass
class HealthWatch:
    """An API process's ``/health/full`` every ``HEALTH_EVERY_S``: 503 while it reconnects."""

    service: Service
    changes: list[tuple[float, bool]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self, http: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(http))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, http: aiohttp.ClientSession) -> None:
        last: bool | None = None
        while True:
            ok = False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with asyncio.timeout(1.0), http.get(self.service.health_url) as response:
                    ok = response.status == 200
            if ok != last:
                self.changes.append((time.monotonic(), ok))
                last = ok
            await asyncio.sleep(HEALTH_EVERY_S)

    def outages(self, after: float) -> list[tuple[float, float | None]]:
        """(down, up or None) of each time it reported itself disconnected after ``after``."""
        found: list[tuple[float, float | None]] = []
        down: float | None = None
        for at, ok in self.changes:
            if at < after and not ok:
                down = None
                continue
            if not ok and down is None:
                down = max(at, after)
            elif ok and down is not None:
                found.append((down, at))
                down = None
        if down is not None:
            found.append((down, None))
        return found


async def new_leader(
    cluster: Any, queue: str, old: str, since: float, timeout: float = 120.0
) -> tuple[float, str] | None:
    """Seconds from ``since`` until the management API names a leader of ``queue`` other
    than ``old``, and that leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        urls = [n.management_url for n in up(cluster) if n.name != old]
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, RuntimeError):
            leader = leader_name(await asyncio.to_thread(ask_first, urls, lambda u: queue_info(u, queue)))
            if leader is not None and leader != old:
                return time.monotonic() - since, leader
        await asyncio.sleep(0.25)
    return None


LOG_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z \[\w+ *\] ([^\n]*)$", re.M)


LOST = (b"the broker node stopped answering", b"Unexpected connection close", b"Connection attempt")
"""Log lines that say a process lost its broker connection (its own, aio-pika's, aiormq's)."""


def first_logged(service: Service, message: bytes | tuple[bytes, ...], after_epoch: float) -> float | None:
    """The Unix time of the first line of ``service``'s log starting with ``message`` (or one
    of them) that it wrote after ``after_epoch`` (the logs' timestamps are UTC, in µs)."""
    try:
        text = service.log.read_bytes()
    except OSError:
        return None
    for match in LOG_LINE.finditer(text):
        if not match.group(2).startswith(message):
            continue
        at = dt.datetime.fromisoformat(match.group(1).decode()).replace(tzinfo=dt.UTC).timestamp()
        if at > after_epoch:
            return at
    return None


def leaders(cluster: Any, queues: list[str]) -> dict[str, str | None]:
    urls = [n.management_url for n in up(cluster)]
    return {q: leader_name(ask_first(urls, lambda u, q=q: queue_info(u, q))) for q in queues}


async def members_back(cluster: Any, queues: list[str], timeout: float = 90.0) -> float | None:
    """Seconds until every node is an online member of each of ``queues`` (quorum queues and
    streams list ``online``; where a queue does not, its ``members``); None past ``timeout``."""
    began = time.monotonic()
    everyone = {n.name for n in cluster.nodes}

    def whole() -> bool:
        urls = [n.management_url for n in up(cluster)]
        for queue in queues:
            info = ask_first(urls, lambda u, q=queue: queue_info(u, q))
            if info is None:
                continue
            online = info.get("online", info.get("members"))
            if online is not None and not everyone <= set(online):
                return False
        return True

    while time.monotonic() - began < timeout:
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, RuntimeError):
            if await asyncio.to_thread(whole):
                return time.monotonic() - began
        await asyncio.sleep(0.5)
    return None


# -- the cluster whole again ------------------------------------------------------------------


def partitions(cluster: Any) -> dict[str, list[str]]:
    """Node -> the nodes it reports partitioned from, as every node still up lists them."""
    found: dict[str, list[str]] = {}
    for node in up(cluster):
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
            with _client(node.management_url) as client:
                response = client.get("/api/nodes", params={"columns": "name,running,partitions"})
            response.raise_for_status()
            for entry in response.json():
                if entry.get("partitions"):
                    found[str(entry["name"])] = list(entry["partitions"])
    return found


def running_seen_by(management_url: str) -> set[str]:
    """The nodes that one node sees running."""
    with _client(management_url) as client:
        response = client.get("/api/nodes", params={"columns": "name,running"})
    response.raise_for_status()
    return {str(e["name"]) for e in response.json() if e.get("running")}


def running_seen(cluster: Any) -> dict[str, set[str]]:
    """Node -> the nodes it sees running (the nodes that answer)."""
    seen: dict[str, set[str]] = {}
    for node in cluster.nodes:
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
            seen[node.name] = running_seen_by(node.management_url)
    return seen


def restore(cluster: Any, log: Callable[[str], None] = print) -> list[str]:
    """Bring every node back (start the killed and stopped ones, resume the paused, heal the
    cut off), then wait until each node sees all of them running with no partition. A node
    still partitioned after ``PARTITION_GRACE_S`` has its application restarted, which rejoins
    it. What had to be done, for the record."""
    done = []
    for node in cluster.nodes:
        partitioned = getattr(cluster, "partitioned", lambda node: False)
        if partitioned(node):
            cluster.heal(node)
            done.append(f"healed {node.name}")
        state = cluster.state(node)
        if state == "paused":
            cluster.resume(node)
            done.append(f"resumed {node.name}")
        elif state in ("killed", "app_stopped"):
            cluster.start(node)
            done.append(f"started {node.name} ({state})")
    everyone = {n.name for n in cluster.nodes}
    began = first = time.monotonic()
    restarted: set[str] = set()
    while True:
        split = partitions(cluster)
        seen = running_seen(cluster)
        whole = not split and len(seen) == len(everyone) and all(s >= everyone for s in seen.values())
        if whole:
            return done
        waited = time.monotonic() - began
        if split and waited > PARTITION_GRACE_S:
            # The node that sees the most others as partitioned from it is the odd one out;
            # once it has rejoined, the others forget the partition in a while: wait again.
            odd = max((n for n in split if n not in restarted), key=lambda n: len(split[n]), default=None)
            if odd is not None:
                node = next(n for n in cluster.nodes if n.name == odd)
                log(f"  {odd} partitioned from {split[odd]}: restarting its application to rejoin")
                cluster.stop_app(node)
                cluster.start_app(node)
                restarted.add(odd)
                done.append(f"restarted the application of {odd} (partitioned from {split[odd]})")
                began = time.monotonic()
                continue
        if time.monotonic() - first > HEALTHY_TIMEOUT_S:
            raise RuntimeError(f"the cluster is not whole again: running {seen}, partitions {split}")
        time.sleep(0.5)


def save_logs(cluster: Any, into: Path) -> None:
    """Copy every node's logs into ``into`` (one directory or file per node)."""
    into.mkdir(parents=True, exist_ok=True)
    for index, node in enumerate(cluster.nodes, start=1):
        member = getattr(cluster, "member", None)
        if member is not None:
            directory = member(node).dir
            if directory is not None:
                shutil.copytree(Path(directory) / "log", into / f"node{index}", dirs_exist_ok=True)
            continue
        container = getattr(cluster, "container", None)
        if container is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                logs = subprocess.run(
                    ["podman", "logs", container(node)], capture_output=True, text=True, timeout=60
                )
                (into / f"node{index}.log").write_text(logs.stdout + logs.stderr)
