"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

import re
from typing import Any, Literal

from mqcommon.schemas import SessionId
from pydantic import BaseModel, ConfigDict, Field, field_validator

# One character that is not whitespace, spelled out: Python's idea of whitespace (what the
# API strips) and that of JSON Schema's ECMAScript regexes (what clients check) differ.
NOT_BLANK_PATTERN = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)


class ChatRequest(BaseModel):
    # Unknown keys are ignored so older and newer clients keep working.
    model_config = ConfigDict(extra="ignore")

    # The validator below keeps its own clear message; the schema states the same rule:
    # at least one character that is not whitespace. The upper bound is MAX_MESSAGE_CHARS,
    # a setting, so it is written into the document at start-up (see ``openapi``).
    message: str = Field(
        description="The user's message: not empty, not only whitespace.",
        json_schema_extra={"minLength": 1, "pattern": NOT_BLANK_PATTERN},
    )
    session_id: SessionId | None = Field(
        default=None, description="Optional client-chosen id (letters, digits, _.:-; up to 128)."
    )
    model: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not _NOT_BLANK.search(value):
            raise ValueError("message must not be empty")
        return value


class Queued(BaseModel):
    status: Literal["queued"] = "queued"
    session_id: str
    stream_url: str


class CancelResult(BaseModel):
    session_id: str
    status: Literal["cancelled", "finished", "cancelling"] = Field(
        description="`cancelled`: it ended cancelled. `finished`: it had already ended, nothing "
        "changed (`end` says how). `cancelling`: still queued; its task is dropped, without calling "
        "the LLM, when a worker takes it, and its stream then ends with `cancelled`."
    )
    end: Literal["done", "error", "cancelled"] | None = Field(default=None, description="How it ended.")


class ErrorBody(BaseModel):
    """Every error: branch on ``error``, show ``message``."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="A stable code, e.g. 'validation_error'.")
    message: str = Field(description="What is wrong, for people.")
    detail: list[dict[str, Any]] | None = Field(
        default=None, description="With 'validation_error': each problem (loc, msg, type)."
    )


class HealthFull(BaseModel):
    status: Literal["ok", "degraded"]
    rabbitmq: Literal["connected", "disconnected"]
    openai: Literal["configured", "missing"] = Field(
        description="Whether an LLM key or base URL is configured where generations run."
    )
    llm: Literal["via_workers", "direct"] = Field(description="Where generations run.")
    workers: int = Field(ge=0, description="Workers of this API's task queue heard from lately.")
    sessions: int = Field(ge=0)


class Stats(BaseModel):
    status: Literal["ok"]
    queue: str
    pending_tasks: int = Field(ge=0)
    consumers: int = Field(ge=0)
    open_streams: int = Field(ge=0)
    sessions: int = Field(ge=0)
    workers: int = Field(ge=0)
    worker_concurrency: int = Field(ge=0)
    generations_running: int = Field(ge=0)


class LLMCheck(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "error"]
    base_url: str
