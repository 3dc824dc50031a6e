"""Worker metrics (Prometheus naming: base units, _total, _seconds, low-cardinality labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

TASKS_IN_PROGRESS = Gauge(
    "llmstream_worker_tasks_in_progress", "Generations running in this worker process."
)
TASK_CONCURRENCY_LIMIT = Gauge(
    "llmstream_worker_concurrency_limit", "Generations one process may run at once (prefetch)."
)
OUTCOMES = ("completed", "failed", "retried", "cancelled", "dead_lettered")
TASKS = Counter(
    "llmstream_worker_tasks_total",
    "Tasks finished, by outcome: " + ", ".join(OUTCOMES) + ".",
    ["outcome"],
)
for _outcome in OUTCOMES:
    TASKS.labels(_outcome)  # at zero from the start, so rate() sees the first one
BROKER_CONNECTED = Gauge(
    "llmstream_worker_broker_connected", "1 when the worker holds a broker connection."
)
QUEUE_WAIT = Histogram(
    "llmstream_worker_queue_wait_seconds",
    "Time from task publication by the API to the start of its generation.",
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_TTFT = Histogram(
    "llmstream_worker_upstream_ttft_seconds",
    "Time from the LLM request to its first token.",
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "llmstream_worker_tokens_total", "Text pieces (tokens) received from the LLM."
)
GENERATION_DURATION = Histogram(
    "llmstream_worker_generation_duration_seconds",
    "Time from the LLM request to the last event confirmed by the broker.",
    buckets=DURATION_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "llmstream_worker_upstream_errors_total",
    "LLM failures by class (http_<status> or exception type) and whether retryable.",
    ["error_class", "retryable"],
)
EVENT_BATCHES = Counter(
    "llmstream_worker_event_batches_total",
    "Live messages sent (one per API replica per flush) and transcripts published.",
)
EVENTS_PUBLISHED = Counter(
    "llmstream_worker_events_published_total",
    "Session frames sent inside live messages (one per session per flush and replica).",
)
PUBLISH_FAILURES = Counter(
    "llmstream_worker_event_publish_failures_total",
    "Transcripts the broker did not confirm, and live messages that could not be sent.",
)
MALFORMED = Counter(
    "llmstream_worker_malformed_messages_total",
    "Presence messages and cancel records that could not be read (logged and skipped).",
)
ANSWERS_KEPT = Gauge(
    "llmstream_worker_answers_kept",
    "Answers this process holds for replay: running, or ended less than KEEP_ENDED_S ago.",
)
REPLAYS = Counter(
    "llmstream_worker_replays_total",
    "Answers sent again from offset 0 to a replica that asked (a late reader or a gap).",
)
