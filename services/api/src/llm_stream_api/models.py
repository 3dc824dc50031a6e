"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

from typing import Literal

from mqcommon.schemas import SessionId
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatRequest(BaseModel):
    # Unknown keys are ignored so older and newer clients keep working.
    model_config = ConfigDict(extra="ignore")

    message: str = Field(description="The user's message.")
    session_id: SessionId | None = Field(
        default=None, description="Optional client-chosen id (letters, digits, _.:-; up to 128)."
    )
    model: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be empty")
        return value


class Queued(BaseModel):
    status: Literal["queued"] = "queued"
    session_id: str
    stream_url: str
