"""How many tasks the queues hold: the one reader of queue depth, for ``/stats``, the queue
log's reconciliation and the ``/metrics`` gauges.

Passive declarations on the API's own connection give ready messages and consumers (not the
unacknowledged ones): ``task_queue`` caches them for ``STATS_CACHE_S``. The scrape-time
gauges prefer the management API (ready, unacknowledged, consumers) and fall back to passive
declarations when it is absent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.errors import BrokerUnavailable
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llm_stream_api.broker.connection import BrokerConnection

log = structlog.get_logger(__name__)

PASSIVE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Depth:
    messages: int  # ready for delivery
    consumers: int


class QueueDepth:
    """Passive declarations of queues, on the API's connection and event loop."""

    def __init__(self, broker: BrokerConnection) -> None:
        self._broker = broker
        self._channel: AbstractChannel | None = None
        self._cached: dict[str, tuple[float, Depth]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def task_queue(self, line: str | None = None) -> Depth:
        """A line's depth (``line``; None: the default line), cached for STATS_CACHE_S: its
        messages over every shard, and the consumers of a shard (each worker consumes every
        shard); raises ``BrokerUnavailable``."""
        now = time.monotonic()
        name = line or self._broker.topology.task_queue.name
        cached = self._cached.get(name)
        if cached and now - cached[0] < self._broker.settings.stats_cache_s:
            return cached[1]
        shards = [spec.name for spec in self._broker.topology_of(name).task_queues]
        found = await self.read(shards, strict=True)
        depth = Depth(
            sum(found[shard].messages for shard in shards), max(found[shard].consumers for shard in shards)
        )
        self._cached[name] = (now, depth)
        return depth

    async def read(self, names: Iterable[str], *, strict: bool = False) -> dict[str, Depth]:
        """The depth of each queue that exists; ``strict``: a missing or unreadable one raises
        ``BrokerUnavailable`` instead of being left out."""
        connection = self._broker.connection
        if not self._broker.connected or connection is None:
            raise BrokerUnavailable("not connected to the broker")
        found: dict[str, Depth] = {}
        for name in names:
            try:
                if self._channel is None or self._channel.is_closed:
                    self._channel = await connection.channel()
                # The robust channel would answer from its cache of declared queues; the
                # underlying channel asks the broker every time.
                underlay = await self._channel.get_underlay_channel()
                result = await underlay.queue_declare(name, passive=True)
            except (AMQPException, AMQPError, ConnectionError, RuntimeError) as exc:
                self._channel = None  # a missing queue closes the channel
                if strict:
                    raise BrokerUnavailable(f"cannot inspect {name}: {exc}") from exc
                continue
            found[name] = Depth(result.message_count or 0, result.consumer_count or 0)
        return found

    def bind_loop(self) -> None:
        """Remember the event loop that owns the connection (call from it), for ``read_blocking``."""
        self._loop = asyncio.get_running_loop()

    def read_blocking(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """``read`` from another thread (the metrics scrape): (messages, consumers) per queue."""
        if self._loop is None:
            raise ConnectionError("no event loop to declare on")
        future = asyncio.run_coroutine_threadsafe(self.read(list(names)), self._loop)
        try:
            found = future.result(PASSIVE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer to passive declarations within {PASSIVE_TIMEOUT_S:g}s") from None
        except BrokerUnavailable as exc:
            raise ConnectionError(str(exc)) from exc
        return {name: (depth.messages, depth.consumers) for name, depth in found.items()}


@dataclass(frozen=True, slots=True)
class WatchedQueue:
    """A queue the gauges report, with its labels."""

    name: str
    role: str  # tasks | dead_letter
    pool: str = "default"
    lane: str = "default"

    @property
    def labels(self) -> list[str]:
        return [self.name, self.role, self.pool, self.lane]


class QueueDepthCollector(Collector):
    """Task and dead-letter queue depth, cached between scrapes.

    The source is the management API when it answers: ready, unacknowledged and consumers per
    queue. Without it (plugin disabled, unreachable), and when ``passive`` is given, passive
    declarations on the API's own connection: ready messages and consumers, no unacknowledged
    count. The management API is tried again every ``management_retry_s``. The log says which
    source is in use, once per change.
    """

    def __init__(
        self,
        management_url: str,
        queues: dict[str, str] | list[WatchedQueue],
        cache_s: float = 5.0,
        *,
        passive: Callable[[Iterable[str]], dict[str, tuple[int, int]]] | None = None,
        management_timeout_s: float = 2.0,
        management_retry_s: float = 60.0,
    ):
        self._base = management_url.rstrip("/")
        # role -> queue name (one pool), or every queue with its role, pool and lane
        self._queues = (
            [WatchedQueue(name, role) for role, name in queues.items()]
            if isinstance(queues, dict) else queues
        )
        self._cache_s = cache_s
        self._passive = passive
        self._management_timeout_s = management_timeout_s
        self._management_retry_s = management_retry_s
        self._management_failed_at: float | None = None
        self._source: str | None = None
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None
        self._lock = threading.Lock()

    @property
    def source(self) -> str | None:
        """``management``, ``passive``, ``none`` (nothing answered), or None before a scrape."""
        return self._source

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:  # concurrent scrapes share one read of the broker
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self._cache_s:
                return self._cached[1]
            families = self._scrape(now)
            self._cached = (time.monotonic(), families)
            return families

    def _scrape(self, now: float) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "llmstream_queue_stats_up",
            "1 when queue depth could be read; source: management (the management API), "
            "passive (passive declarations: no unacknowledged count) or none.",
            labels=["source"],
        )
        labels = ["queue", "role", "pool", "lane"]  # role: tasks | dead_letter
        ready = GaugeMetricFamily(
            "llmstream_queue_messages_ready", "Messages ready for delivery.", labels=labels
        )
        unacked = GaugeMetricFamily(
            "llmstream_queue_messages_unacknowledged",
            "Messages delivered and not yet acknowledged (tasks being generated).",
            labels=labels,
        )
        consumers = GaugeMetricFamily(
            "llmstream_queue_consumers", "Consumers attached to the queue.", labels=labels
        )
        dead = GaugeMetricFamily(
            "llmstream_dead_letter_messages", "Messages waiting in the dead-letter queue.", labels=["pool"]
        )
        retry_management = (
            self._management_failed_at is None
            or now - self._management_failed_at >= self._management_retry_s
        )
        problem = "not tried"
        if retry_management:
            try:
                stats = self._from_management()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self._management_failed_at = now
                problem = _describe(exc)
            else:
                self._management_failed_at = None
                self._use("management")
                for queue in self._queues:
                    if queue.name not in stats:
                        continue  # not declared (yet)
                    data = stats[queue.name]
                    ready.add_metric(queue.labels, data.get("messages_ready", 0))
                    unacked.add_metric(queue.labels, data.get("messages_unacknowledged", 0))
                    consumers.add_metric(queue.labels, data.get("consumers", 0))
                    if queue.role == "dead_letter":
                        dead.add_metric([queue.pool], data.get("messages", 0))
                up.add_metric(["management"], 1)
                return [up, ready, unacked, consumers, dead]
        if self._passive is not None:
            try:
                found = self._passive([queue.name for queue in self._queues])
            except (OSError, RuntimeError, AMQPException, AMQPError) as exc:
                passive_problem = _describe(exc)
            else:
                self._use("passive", problem)
                for queue in self._queues:
                    if queue.name in found:
                        messages, count = found[queue.name]
                        ready.add_metric(queue.labels, messages)
                        consumers.add_metric(queue.labels, count)
                        if queue.role == "dead_letter":
                            dead.add_metric([queue.pool], messages)
                up.add_metric(["passive"], 1)
                return [up, ready, consumers, dead]
        else:
            passive_problem = "no broker connection to declare on"
        self._use("none", f"{problem}; passive declarations: {passive_problem}")
        up.add_metric(["none"], 0)
        return [up]

    def _from_management(self) -> dict[str, dict[str, Any]]:
        url = httpx.URL(self._base)
        auth = (url.username, url.password) if url.username else None
        base = str(url.copy_with(username=None, password=None)).rstrip("/")
        stats = {}
        with httpx.Client(timeout=self._management_timeout_s, auth=auth, trust_env=False) as client:
            for name in (queue.name for queue in self._queues):
                response = client.get(f"{base}/api/queues/%2F/{quote(name, safe='')}")
                if response.status_code == 404 and response.headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    continue  # the management API answered: that queue does not exist
                response.raise_for_status()
                stats[name] = response.json()
        return stats

    def _use(self, source: str, why: str | None = None) -> None:
        if source == self._source:
            return
        self._source = source
        where = str(httpx.URL(self._base).copy_with(username=None, password=None))
        if source == "management":
            log.info("queue depth from the management API", source=source, management_url=where)
        elif source == "passive":
            log.warning(
                "queue depth from passive declarations: the management API is unavailable, so "
                "unacknowledged counts are missing; enable the rabbitmq_management plugin or set "
                "RABBITMQ_MANAGEMENT_URL",
                source=source, management_url=where, management_error=why,
            )
        else:
            log.warning("queue depth unavailable", source=source, management_url=where, error=why)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url.path}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

