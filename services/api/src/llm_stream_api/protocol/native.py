"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from mqcommon.schemas import MODEL_PATTERN, SessionId
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# One character that is not whitespace, spelled out: Python's idea of whitespace (what the
# API strips) and that of JSON Schema's ECMAScript regexes (what clients check) differ.
# The lane of its model's pool a request waits in (``quota.service_tiers``); OpenAI's names.
ServiceTier = Literal["auto", "default", "flex", "priority"]

NOT_BLANK_PATTERN = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)


def _string_only(schema: dict[str, Any]) -> None:
    """``message`` may be left out, but when present it is a string with a non-blank character."""
    schema.pop("anyOf", None)
    schema.pop("default", None)
    schema.update(type="string", minLength=1, pattern=NOT_BLANK_PATTERN)


def _not_null(schema: dict[str, Any]) -> None:
    """May be left out, but never null."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    schema.pop("default", None)
    if len(branches) == 1:
        schema.update(branches[0])
    else:
        schema["anyOf"] = branches


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined, to embed in the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class Turn(BaseModel):
    """One message of a conversation, in the OpenAI format (text content)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class ChatRequest(BaseModel):
    """``message`` (one user message), or ``messages`` (a conversation); at least one of them."""

    # Unknown keys are ignored so older and newer clients keep working.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"anyOf": [{"required": ["message"]}, {"required": ["messages"]}]},
    )

    # The validator below keeps its own clear message; the schema states the same rule:
    # at least one character that is not whitespace. The upper bound is MAX_MESSAGE_CHARS,
    # a setting, so it is written into the document at start-up (see ``openapi``).
    message: str | None = Field(
        default=None,
        description="The user's message: not empty, not only whitespace. With `messages`, the "
        "latest question: added as the last user message unless `messages` already ends with it.",
        json_schema_extra=_string_only,
    )
    # At most MAX_MESSAGES, a setting: checked by ``limits``, written into the document.
    messages: list[Turn] | None = Field(
        default=None, min_length=1,
        description="The conversation so far (system, user and assistant turns), OpenAI-style.",
        json_schema_extra=_not_null,
    )
    session_id: SessionId | None = Field(
        default=None, description="Optional client-chosen id (letters, digits, _.:-; up to 128)."
    )
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=MODEL_PATTERN)
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="Cap on generated tokens: at most LLM_MAX_TOKENS, the default when it is left out.",
    )
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        default=None, description="Up to 4 stop sequences."
    )
    seed: int | None = Field(default=None, ge=-(2**53), le=2**53, description="Sampling seed.")
    user: str | None = Field(default=None, max_length=256, description="An end-user id, passed to the LLM.")
    service_tier: ServiceTier | None = Field(
        default=None,
        description="The lane of the model's pool to wait in: `priority` goes first, `flex` gets a "
        "guaranteed minimum share; `auto` or none: the key's default (KEY_SERVICE_TIERS).",
    )

    @field_validator("temperature", "top_p", "max_tokens", "seed", mode="before")
    @classmethod
    def _a_json_number(cls, value: Any) -> Any:
        # JSON true is not a number, though Python's bool is an int; nor is "0.5", which
        # pydantic would otherwise read as one.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        if isinstance(value, str):
            raise ValueError("must be a number, not a string")
        return value

    @field_validator("messages")
    @classmethod
    def _a_list(cls, value: list[Turn] | None) -> list[Turn]:
        if value is None:
            raise ValueError("messages must be a list")
        return value

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("message must be a string")
        if not _NOT_BLANK.search(value):
            raise ValueError("message must not be empty")
        return value

    @model_validator(mode="after")
    def _something_to_answer(self) -> ChatRequest:
        if self.message is None and self.messages is None:
            raise ValueError("message or messages is required")
        return self


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


class PoolHealth(BaseModel):
    models: list[str] = Field(description="Model ids and aliases it serves (empty: any, without LLM_POOLS).")
    lanes: list[Literal["priority", "default", "flex"]]
    queue: str = Field(description="Its default lane's task queue.")
    workers: int = Field(ge=0, description="Its workers heard from lately (0: scaled to zero, or down).")
    concurrency: int = Field(ge=0)
    running: int = Field(ge=0)
    openai: Literal["configured", "missing"]
    upstream: Literal["ok", "failing", "unknown"] = Field(
        description="How its workers' last generations found the LLM (unknown before any)."
    )
    worker_start_s: float | None = Field(
        ge=0, description="How long its last worker took from start to consuming (null before one)."
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
    pools: dict[str, PoolHealth] = Field(
        default_factory=dict,
        description="Each model pool: what it serves, and its workers by their heartbeats.",
    )


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
