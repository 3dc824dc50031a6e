"""Worker heartbeats: what a worker tells the API processes about itself, never a secret.

Every worker publishes a ``WorkerHeartbeat`` on the workers fanout exchange every
``interval_s`` seconds, and at once when it sees a ``probe`` there (an API process that has
just connected sends one, so it need not wait a whole interval). A worker that stops sends a
last heartbeat with ``state="stopping"``. An API process keeps the last heartbeat of each
worker and forgets it after ``EXPIRY_INTERVALS`` announced intervals of silence.

Only the facts an operator or an old client needs cross the wire: whether an LLM key or base
URL is configured (booleans), the concurrency limit and the generations running now.
"""

from __future__ import annotations

import time
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HEARTBEAT_VERSION = 1
EXPIRY_INTERVALS = 3
PROBE = orjson.dumps({"type": "probe", "v": HEARTBEAT_VERSION})


class WorkerHeartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["heartbeat"] = "heartbeat"
    v: int = HEARTBEAT_VERSION
    worker: str = Field(min_length=1, max_length=300, description="Process name of the worker.")
    queue: str = Field(description="The task queue it consumes: deployments may share a broker.")
    pool: str = Field(default="default", description="The model pool it serves (docs/adr/0006).")
    lanes: list[str] = Field(default_factory=lambda: ["default"], description="The lanes it consumes.")
    started_in_s: float | None = Field(
        default=None, ge=0,
        description="Seconds from its process start to consuming: what a pool scaled to zero waits for.",
    )
    upstream: Literal["ok", "failing", "unknown"] = Field(
        default="unknown", description="How its last generation found the LLM: answered, or failed."
    )
    state: Literal["ready", "starting", "stopping"] = "ready"
    llm_key: bool = Field(description="An OPENAI_API_KEY is set.")
    llm_base_url: bool = Field(description="An OPENAI_BASE_URL is set.")
    concurrency: int = Field(ge=0)
    running: int = Field(ge=0)
    holds: int = Field(
        default=0, ge=0,
        description="Most tasks it may hold delivered but not started (its lanes' and shards' "
        "prefetch beyond its concurrency): they are still in the line, not in the queue's count.",
    )
    interval_s: float = Field(gt=0)
    at: float = Field(default_factory=time.time, description="Wall-clock time of sending.")

    @property
    def llm_configured(self) -> bool:
        return self.llm_key or self.llm_base_url

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump())


def decode(body: bytes) -> WorkerHeartbeat | Literal["probe"] | None:
    """A heartbeat, ``"probe"``, or None for anything else (unknown or malformed)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("type") == "probe":
        return "probe"
    if data.get("type") != "heartbeat":
        return None
    try:
        return WorkerHeartbeat.model_validate(data)
    except ValidationError:
        return None
