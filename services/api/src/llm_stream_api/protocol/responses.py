"""The Responses dialect (``/v1/responses``): request bodies, response objects, stream events.

A response is a session: its id is the session id, so any replica can serve it. Its stream
events are numbered from positions in the answer, so every replica gives every event the
same ``sequence_number`` and ``starting_after=N`` resumes anywhere:

    0  response.created            3 + p  response.output_text.delta ending at character p
    1  response.in_progress        L + 4  response.output_text.done     (L: the answer's length)
    2  response.output_item.added  L + 5  response.content_part.done
    3  response.content_part.added L + 6  response.output_item.done
                                   L + 7  response.completed | response.failed | response.incomplete

A cancelled response ends with ``response.incomplete`` and status ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from mqcommon.schemas import MODEL_PATTERN
from pydantic import Field

from llm_stream_api.protocol.openai_base import (
    ROLE_NAMES,
    SSE_EVENT_SCHEMA,
    Integer,
    OpenAIBaseModel,
    OpenAIError,
    TokenCap,
    content_schema,
    documented_as,
    null_or,
    refuse_unless,
    turn,
)
from llm_stream_api.protocol.task import FieldNames, TaskRequest

FIRST_DELTA = 3  # the sequence number before the first delta
INPUT_KINDS = ("input_text", "output_text", "text")
LIMIT_NAMES = FieldNames(messages="input", max_tokens="max_output_tokens")
# What ``task_request`` takes as input: a string, or message items.
INPUT_ITEM = {
    "type": "object",
    "properties": {
        "type": {"const": "message"},
        "role": {"type": "string", "enum": ROLE_NAMES},
        "content": content_schema(INPUT_KINDS),
    },
    "required": ["role"],
}
INPUT_SCHEMA = {
    "anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": INPUT_ITEM, "minItems": 1}]
}
TEXT_FORMAT = {
    "type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"],
    "additionalProperties": False,
}


class ResponseRequest(OpenAIBaseModel):
    model: str | None = Field(default=None, min_length=1, max_length=200, pattern=MODEL_PATTERN)
    input: str | list[Any] = Field(min_length=1, json_schema_extra=documented_as(INPUT_SCHEMA))
    instructions: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: TokenCap | None = None
    user: str | None = None
    stream: bool | None = False
    background: bool | None = False
    # Known parameters we cannot honour: refused unless left at their defaults.
    tools: list[Any] | None = Field(default=None, json_schema_extra=null_or({"type": "array", "maxItems": 0}))
    tool_choice: Any = Field(default=None, json_schema_extra=null_or({"enum": ["none", "auto"]}))
    previous_response_id: str | None = Field(default=None, json_schema_extra=null_or())
    conversation: Any = Field(default=None, json_schema_extra=null_or())
    prompt: Any = Field(default=None, json_schema_extra=null_or())
    reasoning: Any = Field(default=None, json_schema_extra=null_or())
    text: dict[str, Any] | None = Field(default=None, json_schema_extra=null_or(
        {"type": "object", "properties": {"format": {"anyOf": [TEXT_FORMAT, {"type": "null"}]}}}
    ))
    top_logprobs: Integer | None = Field(default=None, json_schema_extra=null_or({"const": 0}))
    max_tool_calls: Integer | None = Field(default=None, json_schema_extra=null_or())
    # Accepted, with no effect here.
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    truncation: str | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None

    def task_request(self, session_id: str) -> TaskRequest:
        refuse_unless(not self.tools, "tools", "tools are not supported")
        refuse_unless(self.tool_choice in (None, "none", "auto"), "tool_choice", "tools are not supported")
        refuse_unless(self.previous_response_id is None, "previous_response_id",
                      "send the whole conversation in input instead")
        refuse_unless(
            self.conversation is None, "conversation", "send the whole conversation in input instead"
        )
        refuse_unless(self.prompt is None, "prompt", "prompt templates are not supported")
        refuse_unless(self.reasoning is None, "reasoning", "reasoning options are not supported")
        fmt = (self.text or {}).get("format")
        refuse_unless(fmt in (None, {"type": "text"}), "text.format", "only plain text output is supported")
        refuse_unless(self.top_logprobs in (None, 0), "top_logprobs", "log probabilities are not available")
        refuse_unless(self.max_tool_calls is None, "max_tool_calls", "tools are not supported")
        turns = [turn("system", self.instructions, "instructions")] if self.instructions else []
        if isinstance(self.input, str):
            turns.append(turn("user", self.input, "input"))
        else:
            for index, item in enumerate(self.input):
                where = f"input[{index}]"
                if not isinstance(item, dict) or item.get("type", "message") != "message":
                    kind = item.get("type") if isinstance(item, dict) else type(item).__name__
                    raise OpenAIError(400, f"{where}: only message items are supported, not {kind!r}",
                                      param=where, code="unsupported_parameter")
                if not isinstance(item.get("role"), str):
                    raise OpenAIError(400, f"{where}.role: required", param=f"{where}.role")
                turns.append(turn(item["role"], item.get("content"), where, kinds=INPUT_KINDS))
        return TaskRequest(
            messages=tuple(turns), model=self.model, session_id=session_id,
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_output_tokens,
            user=self.user, include_usage=True,
        )


# -- what goes back ------------------------------------------------------------------------

STATUS_OF_END = {"done": "completed", "error": "failed", "cancelled": "cancelled", "timeout": "failed"}


RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "number"},
        "status": {"enum": ["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
        "usage": {"anyOf": [{"type": "null"}, {"type": "object"}]},
    },
    "required": ["id", "object", "created_at", "status", "model", "output"],
}
RESPONSE: dict[str, Any] = {
    "description": "The response object; with `stream: true`, its events (`text/event-stream`).",
    "content": {
        "application/json": {"schema": RESPONSE_SCHEMA},
        "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
    },
}


def message_id(response_id: str) -> str:
    return f"msg_{response_id}"


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", prompt + completion),
    }


class Meta:
    """What a response object says besides its text (known fully on the replica that created it)."""

    __slots__ = ("background", "created_at", "instructions", "max_output_tokens", "metadata",
                 "model", "temperature", "top_p", "user")

    def __init__(self, model: str, created_at: float, body: ResponseRequest | None = None) -> None:
        self.model = model
        self.created_at = created_at
        self.background = bool(body and body.background)
        self.instructions = body.instructions if body else None
        self.max_output_tokens = body.max_output_tokens if body else None
        self.metadata = (body.metadata if body else None) or {}
        self.temperature = body.temperature if body else None
        self.top_p = body.top_p if body else None
        self.user = body.user if body else None


def response_object(
    response_id: str, meta: Meta, status: str, text: str,
    *, error: str | None = None, usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    item_status = {"completed": "completed", "queued": "in_progress", "in_progress": "in_progress"}.get(
        status, "incomplete"
    )
    output = [] if status == "queued" else [{
        "type": "message", "id": message_id(response_id), "status": item_status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }]
    return {
        "id": response_id, "object": "response", "created_at": meta.created_at, "status": status,
        "background": meta.background,
        "error": {"code": "server_error", "message": error} if status == "failed" else None,
        "incomplete_details": None, "instructions": meta.instructions,
        "max_output_tokens": meta.max_output_tokens, "metadata": meta.metadata, "model": meta.model,
        "output": output, "parallel_tool_calls": True, "temperature": meta.temperature,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": meta.top_p,
        "truncation": "disabled", "usage": usage_of(usage), "user": meta.user,
    }


def event(kind: str, sequence_number: int, **fields: Any) -> bytes:
    body = {"type": kind, "sequence_number": sequence_number, **fields}
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(body))


def as_created(response: dict[str, Any]) -> dict[str, Any]:
    """The response as it was when it was created: what its first event carries, on a replay
    too (a client rebuilds the response from the events that follow)."""
    status = "queued" if response.get("background") else "in_progress"
    return {**response, "status": status, "output": [], "usage": None, "error": None}


def opening(response_id: str, response: dict[str, Any], after: int) -> list[bytes]:
    """Events 0 to 3 that come after ``after``; ``response`` as it was created."""
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    item = {"type": "message", "id": message_id(response_id), "status": "in_progress",
            "role": "assistant", "content": []}
    events: list[Callable[[], bytes]] = [
        lambda: event("response.created", 0, response=response),
        lambda: event("response.in_progress", 1, response={**response, "status": "in_progress"}),
        lambda: event("response.output_item.added", 2, output_index=0, item=item),
        lambda: event("response.content_part.added", 3, item_id=message_id(response_id),
                      output_index=0, content_index=0, part=part),
    ]
    return [make() for number, make in enumerate(events) if number > after]


def delta(response_id: str, end_position: int, text: str) -> bytes:
    return event("response.output_text.delta", FIRST_DELTA + end_position, item_id=message_id(response_id),
                 output_index=0, content_index=0, delta=text, logprobs=[])


def closing(
    response_id: str, response: dict[str, Any], text: str, after: int, length: int | None = None
) -> list[bytes]:
    """The last four events (from L + 4, L the answer's ``length`` in positions, which its
    other parts count in too) that come after ``after``."""
    base = FIRST_DELTA + (len(text) if length is None else length) + 1
    item_id = message_id(response_id)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = response["output"][0] if response["output"] else {
        "type": "message", "id": item_id, "status": "incomplete", "role": "assistant", "content": [part]}
    final = {"completed": "response.completed", "failed": "response.failed"}.get(
        response["status"], "response.incomplete"
    )
    events: list[Callable[[], bytes]] = [
        lambda: event("response.output_text.done", base, item_id=item_id, output_index=0,
                      content_index=0, text=text, logprobs=[]),
        lambda: event("response.content_part.done", base + 1, item_id=item_id, output_index=0,
                      content_index=0, part=part),
        lambda: event("response.output_item.done", base + 2, output_index=0, item=item),
        lambda: event(final, base + 3, response=response),
    ]
    return [make() for number, make in enumerate(events) if base + number > after]


def error_event(sequence_number: int, error: OpenAIError) -> bytes:
    return event("error", sequence_number, code=error.code, message=error.message, param=error.param)
