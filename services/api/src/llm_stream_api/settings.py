"""API settings: one class, read from the environment once at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from mqcommon.settings import BrokerSettings, LLMSettings
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

# RabbitMQ 4.0's default max_message_size (3.x: 128 MiB): a larger task would be refused by the
# broker, so no accepted body may make one. A task is the body re-encoded plus its own fields.
BROKER_MESSAGE_MAX = 16 * 1024 * 1024
TASK_OVERHEAD = 64 * 1024


class APISettings(BrokerSettings, LLMSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # -- the HTTP server -------------------------------------------------------------------------
    port: int = Field(default=8007, ge=1, le=65535, description="HTTP port.")
    host: str = Field(default="0.0.0.0", description="Bind address.")
    uvicorn_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes.")
    keep_alive_s: int = Field(
        default=75, ge=1, le=3600, description="How long an idle HTTP keep-alive connection is kept open.",
    )
    max_body_bytes: int = Field(
        default=256_000, ge=1024, le=BROKER_MESSAGE_MAX - TASK_OVERHEAD,
        description="Largest accepted request body (413 past it). A task is its body and a little "
        "more, so it stays below RabbitMQ's smallest default max_message_size (16 MiB, 4.0).",
    )
    chat_direct_llm: bool = Field(
        default=False, description="POST /chat calls the LLM from the API instead of the workers."
    )

    # -- input limits: what one request may ask of the LLM, in every dialect (``quota.input_limits``) ---
    # LLM_MAX_TOKENS (LLMSettings) is the ceiling of max_tokens: a request asking for more is
    # refused, one asking for none gets it from the workers.
    max_message_chars: int = Field(default=16_000, ge=1, description="Longest accepted message.")
    max_messages: int = Field(
        default=1000, ge=1, description="Most messages (conversation turns) in one request."
    )
    max_choices: int = Field(
        default=4, ge=1, le=128,
        description="Most choices (n) one Chat Completions request may ask for; each is generated "
        "in full, so it multiplies the cost of the answer.",
    )
    max_total_chars: int = Field(
        default=100_000, ge=1, description="Most characters of all a request's messages together."
    )
    models_allowed: str = Field(
        default="", description="Comma-separated models a request may name; empty: any model."
    )

    # -- admission control: bounds on what one process and the queue take on (``quota.admission``) ---
    # MAX_QUEUED_TASKS (BrokerSettings) bounds the queue for every replica and the broker.
    max_open_streams: int = Field(
        default=10_000, ge=1,
        description="Streams (SSE, streamed completions, POST /chat) one API process serves at "
        "once; past it a new one is refused with 503.",
    )
    retry_after_max_s: int = Field(
        default=120, ge=1, le=3600,
        description="Longest Retry-After of a 503 (full queue, too many streams), whose value "
        "comes from the backlog and the measured drain rate.",
    )

    # -- sessions and their readers: what a replica holds, how long a reader waits (``service``) ---
    session_ttl_s: float = Field(
        default=600.0, gt=0, description="How long answers are kept for late or reconnecting clients."
    )
    session_max_bytes: int = Field(
        default=1_000_000, ge=1000, description="Largest answer kept for one session."
    )
    max_sessions: int = Field(
        default=100_000, ge=100, description="Sessions kept in memory by one API process."
    )
    stream_wait_timeout_s: float = Field(
        default=30.0, gt=0,
        description="How long a stream waits for a session nobody has announced before an error event.",
    )
    stream_idle_timeout_s: float = Field(
        default=300.0, gt=0,
        description="How long a known session may stay silent (queued or stalled) before an error event.",
    )
    sse_ping_s: float = Field(default=10.0, gt=0, le=15, description="Heartbeat comment interval.")
    responses_store_s: float = Field(
        default=3600.0, gt=0,
        description="How long a stored Responses answer can be continued (previous_response_id); "
        "past it the answer is 404. The events stream's retention (EVENTS_MAX_AGE) bounds it.",
    )
    cancel_wait_s: float = Field(
        default=2.0, ge=0, le=30,
        description="How long a cancel request waits for the session to end before answering 202.",
    )

    # -- the broker: publishing, history look-ups, presence, queue statistics (``broker``) -------
    enqueue_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest a POST waits for the broker to confirm the task."
    )
    history_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest one history lookup (a session this replica lacks) may take.",
    )
    history_lookups_max: int = Field(
        default=32, ge=1, le=1000, description="History lookups one API process runs at once.",
    )
    presence_interval_s: float = Field(
        default=5.0, gt=0, description="How often served sessions are announced to the workers."
    )
    stats_cache_s: float = Field(default=1.0, ge=0, description="Cache of queue statistics.")

    # -- browsers (CORS) -------------------------------------------------------------------------
    cors_allow_origins: str = Field(
        default="*",
        description="Origins allowed to call the API from a browser: '*', a comma-separated list "
        "(e.g. 'http://localhost:3000,null' for a page opened from disk), or empty for none.",
    )
    cors_allow_credentials: bool = Field(
        default=False, description="Allow cookies and HTTP auth cross-origin (explicit origins only)."
    )
    cors_max_age_s: int = Field(default=600, ge=0, description="How long browsers cache a preflight.")

    # -- API keys and per-key limits (``keys``, ``quota.key_limits``): off unless keys are given ---
    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="Comma-separated client keys, each `key` or `name:key` (the name is its key "
        "id in metrics and logs). Empty, with no API_KEYS_FILE: no key is needed.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of hashed keys, one `name:sha256hex` line each (`printf %s KEY | "
        "sha256sum`), e.g. a mounted Secret; used with API_KEYS if both are set.",
    )
    api_keys_open_probes: bool = Field(
        default=False,
        description="With keys on, /health/full and /metrics answer without a key (the Helm chart "
        "sets it: readiness probes, helm test and Prometheus scrapes send none).",
    )
    key_requests_per_minute: int = Field(
        default=0, ge=0, description="Requests one key may make per minute to one API process; 0: no limit.",
    )
    key_max_sessions: int = Field(
        default=0, ge=0,
        description="Answers one key may have under way at once through one API process; 0: no limit.",
    )
    key_service_tiers: str = Field(
        default="",
        description='Service tiers per key id (JSON: {"<key id>|*": {"default": "flex", "allowed": '
        '["flex", "default"]}}): the tier a request without one gets, and those a key may ask for '
        "(403 otherwise). Empty: every tier, default 'default'.",
    )
    key_tokens_per_minute: int = Field(
        default=0, ge=0,
        description="Answer tokens one key may receive per minute through one API process; 0: no limit.",
    )

    @property
    def allowed_models(self) -> list[str]:
        return [model.strip() for model in self.models_allowed.split(",") if model.strip()]

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allow_origins.split(",") if origin.strip()]

    @model_validator(mode="after")
    def _default_model_allowed(self) -> APISettings:
        if self.allowed_models and self.llm_model not in self.allowed_models:
            raise ValueError(
                f"LLM_MODEL ({self.llm_model!r}) must be in MODELS_ALLOWED: it answers every "
                "request that names no model"
            )
        return self

    @model_validator(mode="after")
    def _cors_credentials_need_origins(self) -> APISettings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError(
                "CORS_ALLOW_CREDENTIALS needs explicit CORS_ALLOW_ORIGINS: with '*' any site "
                "could make credentialed requests"
            )
        return self


@lru_cache
def get_settings() -> APISettings:
    return APISettings()
