"""API metrics, and the ``/metrics`` exposition.

With ``UVICORN_WORKERS`` > 1 every process writes its samples to ``PROMETHEUS_MULTIPROC_DIR``
(set by ``llm-stream-api`` before the workers start) and a scrape of any process returns the
sum over all of them. Queue depth is read at scrape time (the management API, or passive
declarations when it is absent) and reported once, by the process that serves the scrape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterable
from urllib.parse import quote

import httpx
import structlog
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = structlog.get_logger("llm_stream_api.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

HTTP_REQUESTS = Counter(
    "llmstream_http_requests_total", "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "llmstream_http_request_duration_seconds",
    "Time from request to response headers, by route template.",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)
ENQUEUE_DURATION = Histogram(
    "llmstream_enqueue_duration_seconds",
    "Time to publish a task until the broker confirmed it.", buckets=LATENCY_BUCKETS,
)
OPEN_STREAMS = Gauge(
    "llmstream_open_streams", "Answer streams open to clients, by mode (sse, sync).",
    ["mode"], multiprocess_mode="livesum",
)
CLIENT_TTFT = Histogram(
    "llmstream_client_ttft_seconds",
    "Time from the chat request to the first answer chunk sent to the client, by mode.",
    ["mode"], buckets=TTFT_BUCKETS,
)
STREAM_DURATION = Histogram(
    "llmstream_stream_duration_seconds", "How long answer streams stayed open, by mode.",
    ["mode"], buckets=DURATION_BUCKETS,
)
STREAM_EVENTS = Counter(
    "llmstream_stream_events_total", "Answer events sent to clients, by mode.", ["mode"]
)
STREAM_BYTES = Counter(
    "llmstream_stream_bytes_total", "Answer bytes sent to clients, by mode.", ["mode"]
)
STREAM_ENDS = Counter(
    "llmstream_stream_ends_total",
    "Streams ended, by how: done, error, timeout (no answer in time), disconnect.", ["mode", "how"],
)
REJECT_REASONS = (
    "validation", "invalid_json", "invalid_last_event_id", "too_large", "conflict", "broker_unavailable",
    "overloaded",
)
REJECTED = Counter(
    "llmstream_rejected_requests_total",
    "Requests refused, by reason: " + ", ".join(REJECT_REASONS) + ".",
    ["reason"],
)
EVENTS_RECEIVED = Counter(
    "llmstream_events_received_total",
    "Live frames applied (one per session per worker flush, only for sessions held here).",
)
UNKNOWN_SESSION_FRAMES = Counter(
    "llmstream_unknown_session_frames_total",
    "Live frames for sessions this replica no longer holds (dropped).",
)
MALFORMED = Counter(
    "llmstream_malformed_messages_total",
    "Broker messages that could not be used, by source (live, history) and reason "
    "(malformed, version, frame).",
    ["source", "reason"],
)
LIVE_GAPS = Counter(
    "llmstream_live_gaps_total",
    "Frames that started beyond the text held (a lost message); each asks for a replay.",
)
HISTORY_LOOKUPS = Histogram(
    "llmstream_history_lookup_duration_seconds",
    "Time to read one session's records from the history stream.", buckets=LATENCY_BUCKETS,
)
HISTORY_FAILURES = Counter(
    "llmstream_history_failures_total",
    "History operations that failed, by kind (marker, lookup).", ["kind"],
)
BROKER_CONNECTED = Gauge(
    "llmstream_broker_connected", "1 when the API process holds a broker connection.",
    multiprocess_mode="livemin",
)
HUB_SESSIONS = Gauge(
    "llmstream_hub_sessions", "Sessions held in memory for streaming (per process).",
    multiprocess_mode="livemax",
)
# The key label is a key id (``auth``): a name or a hash prefix, never the key itself.
KEY_REQUESTS = Counter(
    "llmstream_key_requests_total", "Requests with a valid API key, by key id.", ["key"]
)
KEY_REJECTED = Counter(
    "llmstream_key_rejected_total",
    "Requests refused with 429, by key id and limit (requests_per_minute, sessions, "
    "tokens_per_minute).",
    ["key", "limit"],
)
KEY_SESSIONS = Counter(
    "llmstream_key_sessions_total", "Sessions queued, by the key id that created them.", ["key"]
)
AUTH_FAILURES = Counter(
    "llmstream_auth_failures_total",
    "Requests refused with 401, by reason: missing (no key), invalid (a key nobody issued).",
    ["reason"],
)
for _reason in ("missing", "invalid"):
    AUTH_FAILURES.labels(_reason)

# Every known label set exists from the start, at zero, so rate() sees the first increment.
for _mode in ("sse", "sync"):
    OPEN_STREAMS.labels(_mode)
    CLIENT_TTFT.labels(_mode)
    STREAM_DURATION.labels(_mode)
    STREAM_EVENTS.labels(_mode)
    STREAM_BYTES.labels(_mode)
    for _how in ("done", "error", "timeout", "disconnect"):
        STREAM_ENDS.labels(_mode, _how)
for _reason in REJECT_REASONS:
    REJECTED.labels(_reason)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PassiveDepth:
    """Ready messages and consumers of queues by passive declarations on the API's connection.

    Made on the event loop that owns the connection, called from the metrics thread. A passive
    declaration does not see unacknowledged messages.
    """

    def __init__(
        self, connection: Callable[[], AbstractConnection | None], timeout_s: float = 2.0
    ) -> None:
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s

    def __call__(self, queues: Iterable[str]) -> dict[str, tuple[int, int]]:
        future = asyncio.run_coroutine_threadsafe(self._declare(list(queues)), self._loop)
        try:
            return future.result(self._timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer to passive declarations within {self._timeout_s:g}s") from None

    async def _declare(self, queues: list[str]) -> dict[str, tuple[int, int]]:
        connection = self._connection()
        if connection is None or connection.is_closed:
            raise ConnectionError("not connected to the broker")
        found: dict[str, tuple[int, int]] = {}
        for name in queues:
            # A missing queue closes the channel: one short-lived channel per queue.
            channel = await connection.channel()
            try:
                underlay = await channel.get_underlay_channel()
                result = await underlay.queue_declare(name, passive=True)
                found[name] = (result.message_count or 0, result.consumer_count or 0)
            except (AMQPException, AMQPError):
                continue
            finally:
                if not channel.is_closed:
                    await channel.close()
        return found


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
        queues: dict[str, str],
        cache_s: float = 5.0,
        *,
        passive: Callable[[Iterable[str]], dict[str, tuple[int, int]]] | None = None,
        management_timeout_s: float = 2.0,
        management_retry_s: float = 60.0,
    ):
        self._base = management_url.rstrip("/")
        self._queues = queues  # role -> queue name
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
        labels = ["queue", "role"]  # role: tasks | dead_letter
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
            "llmstream_dead_letter_messages", "Messages waiting in the dead-letter queue."
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
                for role, name in self._queues.items():
                    if name not in stats:
                        continue  # not declared (yet)
                    data = stats[name]
                    ready.add_metric([name, role], data.get("messages_ready", 0))
                    unacked.add_metric([name, role], data.get("messages_unacknowledged", 0))
                    consumers.add_metric([name, role], data.get("consumers", 0))
                    if role == "dead_letter":
                        dead.add_metric([], data.get("messages", 0))
                up.add_metric(["management"], 1)
                return [up, ready, unacked, consumers, dead]
        if self._passive is not None:
            try:
                found = self._passive(self._queues.values())
            except (OSError, RuntimeError, AMQPException, AMQPError) as exc:
                passive_problem = _describe(exc)
            else:
                self._use("passive", problem)
                for role, name in self._queues.items():
                    if name in found:
                        messages, count = found[name]
                        ready.add_metric([name, role], messages)
                        consumers.add_metric([name, role], count)
                        if role == "dead_letter":
                            dead.add_metric([], messages)
                up.add_metric(["passive"], 1)
                return [up, ready, consumers, dead]
        else:
            passive_problem = "no broker connection to declare on"
        self._use("none", f"{problem}; passive declarations: {passive_problem}")
        up.add_metric(["none"], 0)
        return [up]

    def _from_management(self) -> dict[str, dict]:
        url = httpx.URL(self._base)
        auth = (url.username, url.password) if url.username else None
        base = str(url.copy_with(username=None, password=None)).rstrip("/")
        stats = {}
        with httpx.Client(timeout=self._management_timeout_s, auth=auth, trust_env=False) as client:
            for name in self._queues.values():
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


def exposition(extra: list[Collector]) -> tuple[bytes, str]:
    """Render /metrics: every process's samples, plus the scrape-time collectors."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # a registry is itself a collector
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
