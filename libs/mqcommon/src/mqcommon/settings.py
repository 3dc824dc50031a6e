"""Settings shared by every llm-stream process, read from the environment.

Names are part of the public contract (the old proof of concept used ``RABBIT_MQ``);
``RABBITMQ_URL`` is accepted as an alias.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BrokerSettings(BaseSettings):
    """Where the broker is and what the shared topology is called."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    rabbit_mq: str = Field(
        default="amqp://guest:guest@localhost:5672/",
        validation_alias=AliasChoices("RABBIT_MQ", "RABBITMQ_URL"),
        description="AMQP URL of the broker: one address (a load balancer or Service in front of a "
        "cluster, preferred), or the URLs of a cluster's nodes separated by commas.",
    )
    queue_replicas: int = Field(
        default=3,
        ge=1,
        description="Members of each quorum queue (task queues, dead letters) when it is created: "
        "x-quorum-initial-group-size. The broker caps it at the cluster's size; 3 survives a node.",
    )
    stream_replicas: int = Field(
        default=3,
        ge=1,
        description="Replicas of each stream (history, cancels, queue logs) when it is created: "
        "x-initial-cluster-size, capped at the cluster's size.",
    )
    queue_leader_locator: Literal["balanced", "client-local"] = Field(
        default="balanced",
        description="Where a new queue's or stream's leader goes: 'balanced' spreads leaders over "
        "the nodes, 'client-local' puts it on the declaring connection's node.",
    )
    amqp_heartbeat_s: int = Field(
        default=30,
        ge=0,
        le=600,
        description="AMQP heartbeat: a dead peer is noticed after about three intervals (0: none).",
    )
    broker_stall_s: float = Field(
        default=3.0,
        ge=0,
        description="A broker node that neither answers a probe nor sends anything else for this "
        "long is left: the connection is closed and made again, to another node (0: never).",
    )
    rabbitmq_management_url: str = Field(
        default="http://guest:guest@localhost:15672",
        description="Management API base URL, used only for queue-depth gauges.",
    )
    task_queue: str = Field(default="llm.tasks", description="Durable quorum queue of chat tasks.")
    intake_exchange: str = Field(
        default="",
        description="Fanout exchange tasks are published to: it routes each into the task queue and "
        "the queue log. Empty: '<TASK_QUEUE>.intake'.",
    )
    queue_log_stream: str = Field(
        default="",
        description="Stream of tasks entering and leaving the task queue (queue positions). "
        "Empty: '<TASK_QUEUE>.log'.",
    )
    llm_pools: str = Field(
        default="",
        description="Model pools (JSON, or the path of a JSON file; docs/adr/0006): each pool's models, "
        "aliases, lanes and upstream. Empty: one pool, 'default', serving every model on TASK_QUEUE.",
    )
    task_shards: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Task queues each line is spread over (docs/adr/0007): one quorum queue is "
        "served by one leader node, so past what one node takes, N shards spread over the nodes "
        "take more. The API picks a task's shard from its session id; workers consume every shard.",
    )
    max_queued_tasks: int = Field(
        default=10_000,
        ge=1,
        description="Most tasks waiting in the task queue (tasks being generated do not count): "
        "past it a POST is refused with 503. It is also the queue's x-max-length (reject-publish), "
        "which counts ready messages only, so the API and the broker bound the same thing.",
    )
    events_stream: str = Field(
        default="llm.events",
        description="Stream of session history: acceptance markers and final transcripts.",
    )
    cancels_stream: str = Field(
        default="llm.cancels",
        description="Stream of cancelled sessions, read by every worker (their queued tasks are dropped).",
    )
    live_exchange: str = Field(
        default="llm.live",
        description="Direct exchange that carries live answer frames to the replicas serving them.",
    )
    presence_exchange: str = Field(
        default="llm.presence",
        description="Fanout exchange on which API processes tell workers which sessions they serve.",
    )
    workers_exchange: str = Field(
        default="llm.workers",
        description="Fanout exchange on which workers publish heartbeats (never secrets).",
    )
    dead_letter_exchange: str = Field(default="llm.dlx", description="Dead-letter exchange.")
    dead_letter_queue: str = Field(default="llm.tasks.dead", description="Dead-lettered tasks.")
    task_max_deliveries: int = Field(
        default=3, ge=1, le=100, description="Deliveries of one task before it is dead-lettered."
    )
    events_max_age: str = Field(
        default="1h", description="Retention of the events stream (RabbitMQ x-max-age syntax)."
    )
    events_max_bytes: int = Field(
        default=2_000_000_000, ge=10_000_000, description="Retention cap of the events stream."
    )
    confirm_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for the broker to confirm a publish."
    )
    log_level: str = Field(default="INFO", description="Log level.")
    log_format: str = Field(default="json", description="'json' or 'console'.")

    @model_validator(mode="after")
    def _derived_names(self) -> BrokerSettings:
        # Derived from the task queue, so a deployment (or a test run) that renames its queue
        # gets its own intake and log without naming them.
        self.intake_exchange = self.intake_exchange or f"{self.task_queue}.intake"
        self.queue_log_stream = self.queue_log_stream or f"{self.task_queue}.log"
        return self

    @field_validator("rabbit_mq")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        urls = [url.strip() for url in value.split(",") if url.strip()]
        if not urls or not all(url.startswith(("amqp://", "amqps://")) for url in urls):
            raise ValueError("RABBIT_MQ must be an amqp:// or amqps:// URL, or several separated by commas")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("json", "console"):
            raise ValueError("LOG_FORMAT must be 'json' or 'console'")
        return value


class LLMSettings(BaseSettings):
    """How to reach the OpenAI-compatible LLM (worker, and the API for /test and direct mode)."""

    model_config = SettingsConfigDict(extra="ignore")

    openai_api_key: str = Field(default="", description="API key; empty means no LLM key.")
    openai_base_url: str | None = Field(
        default=None, description="Any OpenAI-compatible base URL (OpenAI, vLLM, Ollama, mock)."
    )
    llm_model: str = Field(default="gpt-4o-mini", description="Model used when a request names none.")
    llm_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest a single generation may take, end to end."
    )
    llm_connect_timeout_s: float = Field(default=10.0, gt=0, description="Connect timeout.")
    llm_max_retries: int = Field(
        default=2, ge=0, le=10, description="SDK retries of a failed request before any token."
    )
    llm_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Ceiling on generated tokens: what a request naming no max_tokens gets (the "
        "workers), and more than a request may ask for (the API refuses it).",
    )
    system_prompt: str = Field(default="", description="System prompt sent before the message.")
