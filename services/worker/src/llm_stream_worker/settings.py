"""Worker settings: one class, read from the environment once at start-up."""

from __future__ import annotations

from functools import lru_cache

from mqcommon.pools import Line, PoolMap, PoolsError
from mqcommon.settings import BrokerSettings, LLMSettings
from pydantic import Field, model_validator
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
    llm_pool: str = Field(
        default="",
        description="The model pool this worker serves (LLM_POOLS; docs/adr/0006): its queues, upstream "
        "and concurrency. Empty: the default pool.",
    )
    lane_min_share: float = Field(
        default=0.1, gt=0, le=1,
        description="Least share of generation starts the pool's lowest lane gets while it has tasks "
        "waiting (its service tier is never starved by higher ones).",
    )
    metrics_port: int = Field(default=9100, ge=0, le=65535, description="/metrics and /health port.")
    metrics_host: str = Field(default="0.0.0.0", description="Bind address of the metrics server.")


    @model_validator(mode="after")
    def _apply_pool(self) -> WorkerSettings:
        """A worker of a configured pool takes the pool's upstream, concurrency and model."""
        pools = PoolMap.from_settings(self)
        name = self.llm_pool or pools.default.name
        if name not in pools.pools:
            raise PoolsError(f"LLM_POOL {name!r} is not a pool of LLM_POOLS ({', '.join(pools.pools)})")
        pool = pools.pools[name]
        self.llm_pool = name
        if pool.base_url:
            self.openai_base_url = pool.base_url
        if pool.concurrency:
            self.worker_concurrency = pool.concurrency
        if pool.models and "llm_model" not in self.model_fields_set:
            self.llm_model = pool.models[0]
        return self

    def lines(self) -> list[tuple[Line, WorkerSettings]]:
        """Each lane of this worker's pool, highest first, with the settings that name its queues."""
        pools = PoolMap.from_settings(self)
        return [(line, pools.line_settings(self, line)) for line in pools.lines(self.llm_pool)]


@lru_cache
def get_settings() -> WorkerSettings:
    return WorkerSettings()
