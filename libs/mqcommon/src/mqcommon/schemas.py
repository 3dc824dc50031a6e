"""Versioned wire formats: the chat task (API -> worker) and answer events (worker -> API).

Events travel in batches: one stream message carries the events of many sessions that a
worker produced within one flush interval, which keeps the message rate independent of the
token rate. ``offset`` is the position (in characters) of a chunk in the answer, so the API
can merge a redelivered task's regenerated answer without gaps or duplicates.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)

SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
EventKind = Literal["accepted", "started", "chunk", "done", "error"]


def new_id() -> str:
    return uuid.uuid4().hex


class ChatTask(BaseModel):
    """One chat request waiting for a worker."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1
    task_id: str = Field(default_factory=new_id)
    session_id: SessionId
    message: str = Field(min_length=1)
    model: str | None = None
    created_at: float = Field(default_factory=time.time)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, body: bytes) -> ChatTask:
        return cls.model_validate_json(body)


class StreamEvent(BaseModel):
    """One event of one session's answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    session_id: str
    kind: EventKind
    offset: int = Field(default=0, ge=0)
    text: str = ""
    error: str | None = None
    attempt: int = 1
    at: float = Field(default_factory=time.time)
    trace_id: str | None = None  # on accepted/started/final events, so logs join up


class EventBatch(BaseModel):
    """What one message on the events stream carries."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1
    producer: str
    events: list[StreamEvent]

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_defaults=False).encode()

    @classmethod
    def decode(cls, body: bytes) -> EventBatch:
        return cls.model_validate_json(body)
