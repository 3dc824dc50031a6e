"""API metrics, and the ``/metrics`` exposition.

With ``UVICORN_WORKERS`` > 1 every process writes its samples to ``PROMETHEUS_MULTIPROC_DIR``
(set by ``llm-stream-api`` before the workers start) and a scrape of any process returns the
sum over all of them. Queue depth comes from the broker's management API at scrape time and is
reported once, by the process that serves the scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import httpx
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
)
REJECTED = Counter(
    "llmstream_rejected_requests_total",
    "Requests refused, by reason: " + ", ".join(REJECT_REASONS) + ".",
    ["reason"],
)
EVENTS_RECEIVED = Counter(
    "llmstream_events_received_total", "Answer events read from the events stream."
)
BROKER_CONNECTED = Gauge(
    "llmstream_broker_connected", "1 when the API process holds a broker connection.",
    multiprocess_mode="livemin",
)
HUB_SESSIONS = Gauge(
    "llmstream_hub_sessions", "Sessions held in memory for streaming (per process).",
    multiprocess_mode="livemax",
)

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


class QueueDepthCollector(Collector):
    """Task and dead-letter queue depth from the management API (cached between scrapes)."""

    def __init__(self, management_url: str, queues: dict[str, str], cache_s: float = 5.0):
        self._base = management_url.rstrip("/")
        self._queues = queues  # role -> queue name
        self._cache_s = cache_s
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = time.monotonic()
        if self._cached and now - self._cached[0] < self._cache_s:
            return self._cached[1]
        families = self._scrape()
        self._cached = (now, families)
        return families

    def _scrape(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "llmstream_queue_stats_up", "1 when the broker's management API answered."
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
        ok = 1
        url = httpx.URL(self._base)
        auth = (url.username, url.password) if url.username else None
        base = str(url.copy_with(username=None, password=None)).rstrip("/")
        try:
            with httpx.Client(timeout=2.0, auth=auth) as client:
                for role, name in self._queues.items():
                    response = client.get(f"{base}/api/queues/%2F/{name}")
                    response.raise_for_status()
                    data = response.json()
                    ready.add_metric([name, role], data.get("messages_ready", 0))
                    unacked.add_metric([name, role], data.get("messages_unacknowledged", 0))
                    consumers.add_metric([name, role], data.get("consumers", 0))
                    if role == "dead_letter":
                        dead.add_metric([], data.get("messages", 0))
        except (httpx.HTTPError, ValueError):
            ok = 0
        up.add_metric([], ok)
        return [up, ready, unacked, consumers, dead] if ok else [up]


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
