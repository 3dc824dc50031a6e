"""Worker settings: one class, read from the environment once at start-up."""

from __future__ import annotations

from functools import lru_cache

from mqcommon.settings import BrokerSettings, LLMSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class WorkerSettings(BrokerSettings, LLMSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    worker_concurrency: int = Field(
        default=64, ge=1, le=2000,
        description="Generations run at once by one process; also the broker prefetch.",
    )
    flush_interval_ms: float = Field(
        default=50.0, ge=1, le=2000,
        description="Longest a produced token waits before it is published (first tokens never wait).",
    )
    flush_max_bytes: int = Field(
        default=256_000, ge=1024, le=16_000_000,
        description="Publish a batch early once it holds this many bytes of text.",
    )
    keep_ended_s: float = Field(
        default=15.0, ge=0, le=600,
        description="How long a finished answer stays on the worker for replicas that missed its end.",
    )
    cancel_keep_s: float = Field(
        default=3600.0, gt=0, le=3600,
        description="How far back a starting worker reads cancels (its queued tasks are dropped).",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0,
        description="On SIGTERM, how long in-flight generations may finish before being requeued.",
    )
    abandon_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Cancel a generation when no API process has served its session for this long.",
    )
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, le=60,
        description="How often the worker tells the API processes it is alive (and if an LLM is set).",
    )
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="/metrics and /health port.")
    metrics_host: str = Field(default="0.0.0.0", description="Bind address of the metrics server.")


@lru_cache
def get_settings() -> WorkerSettings:
    return WorkerSettings()
