"""API metrics, and the ``/metrics`` exposition.

With ``UVICORN_WORKERS`` > 1 every process writes its samples to ``PROMETHEUS_MULTIPROC_DIR``
(set by ``llm-stream-api`` before the workers start) and a scrape of any process returns the
sum over all of them. Queue depth is read at scrape time (``broker.queue_depth``) and reported
once, by the process that serves the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
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
    "History operations that failed, by kind (marker, lookup, stored).", ["kind"],
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


BROKER_DELIVERIES = Counter(
    "llmstream_broker_deliveries_total",
    "Messages the broker delivered to this process, by source (live, watermark, queue_log, "
    "history, heartbeats): what a replica pays to be one, whoever it serves.", ["source"],
)
BROKER_DELIVERED_BYTES = Counter(
    "llmstream_broker_delivered_bytes_total", "Bytes of the bodies of those messages, by source.",
    ["source"],
)
QUEUE_KEEPER = Gauge(
    "llmstream_queue_keeper",
    "Lines whose queue log this process keeps (one replica keeps each; 1 without pools or lanes).",
    multiprocess_mode="livemax",
)


def count_delivery(source: str, nbytes: int) -> None:
    BROKER_DELIVERIES.labels(source).inc()
    BROKER_DELIVERED_BYTES.labels(source).inc(nbytes)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(extra: list[Collector]) -> tuple[bytes, str]:
    """Render /metrics: every process's samples, plus the scrape-time collectors."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)  # a registry is itself a collector
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST
