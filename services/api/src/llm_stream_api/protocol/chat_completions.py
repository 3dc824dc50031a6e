"""The Chat Completions dialect (``POST /v1/chat/completions``): bodies, chunks, completions.

What we honour goes into the task: the conversation (system, developer, user and assistant
turns with text content), ``temperature``, ``top_p``, ``max_tokens`` or
``max_completion_tokens``, ``stop``, ``seed``, ``user``, ``stream`` and
``stream_options.include_usage``. What we cannot honour is refused by name
(``refuse_what_we_cannot_honour``), and the fields' schemas say which values are honoured.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from mqcommon.schemas import MODEL_PATTERN
from pydantic import Field, JsonValue, field_validator

from llm_stream_api.protocol.openai_base import (
    ROLE_NAMES,
    SSE_EVENT_SCHEMA,
    Integer,
    OpenAIBaseModel,
    OpenAIError,
    Seed,
    TokenCap,
    content_schema,
    documented_as,
    error_object,
    null_or,
    refuse_unless,
    turn,
)
from llm_stream_api.protocol.task import FieldNames, TaskRequest


class Message(OpenAIBaseModel):
    role: str = Field(json_schema_extra=documented_as({"type": "string", "enum": ROLE_NAMES}))
    content: Any = Field(default=None, json_schema_extra=documented_as(content_schema(("text",))))
    name: str | None = None
    tool_calls: Any = Field(default=None, json_schema_extra=null_or())
    tool_call_id: str | None = None
    function_call: Any = Field(default=None, json_schema_extra=null_or())


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# Only allowed with ``stream: true`` (see ``task_request``).
STREAM_OPTIONS_NEED_STREAM: list[JsonValue] = [
    {"not": {"required": ["stream_options"]}},
    {"properties": {"stream_options": {"type": "null"}}},
    {"properties": {"stream": {"const": True}}, "required": ["stream"]},
]


class ChatCompletionRequest(OpenAIBaseModel):
    model_config = {"json_schema_extra": {"anyOf": STREAM_OPTIONS_NEED_STREAM}}

    model: str = Field(min_length=1, max_length=200, pattern=MODEL_PATTERN)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: TokenCap | None = None
    max_completion_tokens: TokenCap | None = None
    stop: str | list[str] | None = Field(
        default=None,
        json_schema_extra=null_or(
            {"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}
        ),
    )
    seed: Seed | None = None
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Known parameters we cannot honour: refused unless left at their defaults; their schemas
    # say which values are honoured.
    n: Integer | None = Field(default=None, ge=1, json_schema_extra=null_or({"const": 1}))
    logprobs: bool | None = Field(default=None, json_schema_extra=null_or({"const": False}))
    top_logprobs: Integer | None = Field(default=None, json_schema_extra=null_or({"const": 0}))
    tools: list[Any] | None = Field(default=None, json_schema_extra=null_or({"type": "array", "maxItems": 0}))
    tool_choice: Any = Field(default=None, json_schema_extra=null_or({"enum": ["none", "auto"]}))
    functions: list[Any] | None = Field(
        default=None, json_schema_extra=null_or({"type": "array", "maxItems": 0})
    )
    function_call: Any = Field(default=None, json_schema_extra=null_or({"enum": ["none", "auto"]}))
    response_format: Any = Field(default=None, json_schema_extra=null_or({
        "type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"],
        "additionalProperties": False,
    }))
    logit_bias: dict[str, Any] | None = Field(
        default=None, json_schema_extra=null_or({"type": "object", "maxProperties": 0})
    )
    presence_penalty: float | None = Field(default=None, json_schema_extra=null_or({"const": 0}))
    frequency_penalty: float | None = Field(default=None, json_schema_extra=null_or({"const": 0}))
    audio: Any = Field(default=None, json_schema_extra=null_or())
    modalities: list[str] | None = Field(default=None, json_schema_extra=null_or({"const": ["text"]}))
    prediction: Any = Field(default=None, json_schema_extra=null_or())
    web_search_options: Any = Field(default=None, json_schema_extra=null_or())
    reasoning_effort: str | None = Field(default=None, json_schema_extra=null_or())
    # Accepted, with no effect here.
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def refuse_what_we_cannot_honour(self) -> None:
        refuse_unless(self.n in (None, 1), "n", "only one choice (n=1) is generated")
        refuse_unless(not self.logprobs, "logprobs", "log probabilities are not available")
        refuse_unless(self.top_logprobs in (None, 0), "top_logprobs", "log probabilities are not available")
        refuse_unless(not self.tools, "tools", "tool calls are not supported")
        refuse_unless(
            self.tool_choice in (None, "none", "auto"), "tool_choice", "tool calls are not supported"
        )
        refuse_unless(not self.functions, "functions", "function calls are not supported")
        refuse_unless(
            self.function_call in (None, "none", "auto"), "function_call", "function calls are not supported"
        )
        refuse_unless(
            self.response_format is None or self.response_format == {"type": "text"},
            "response_format", "only plain text answers are supported",
        )
        refuse_unless(not self.logit_bias, "logit_bias", "logit bias is not supported")
        refuse_unless(self.presence_penalty in (None, 0), "presence_penalty", "penalties are not supported")
        refuse_unless(self.frequency_penalty in (None, 0), "frequency_penalty", "penalties are not supported")
        refuse_unless(self.audio is None, "audio", "audio output is not supported")
        refuse_unless(self.modalities in (None, ["text"]), "modalities", "only text output is supported")
        refuse_unless(self.prediction is None, "prediction", "predicted outputs are not supported")
        refuse_unless(self.web_search_options is None, "web_search_options", "web search is not supported")
        refuse_unless(self.reasoning_effort is None, "reasoning_effort", "reasoning effort is not supported")
        for index, message in enumerate(self.messages):
            where = f"messages[{index}]"
            refuse_unless(message.tool_calls is None, f"{where}.tool_calls", "tool calls are not supported")
            refuse_unless(
                message.function_call is None, f"{where}.function_call", "function calls are not supported"
            )

    @property
    def limit_names(self) -> FieldNames:
        """The token cap is ``max_completion_tokens`` when both are given (see ``task_request``)."""
        return FieldNames(max_tokens="max_completion_tokens" if self.max_completion_tokens else "max_tokens")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def task_request(self) -> TaskRequest:
        self.refuse_what_we_cannot_honour()
        if self.stream_options is not None and not self.stream:
            raise OpenAIError(
                400, "stream_options: only allowed when stream is true", param="stream_options",
            )
        turns = tuple(turn(m.role, m.content, f"messages[{i}]") for i, m in enumerate(self.messages))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop) if self.stop else None
        return TaskRequest(
            messages=turns, model=self.model, temperature=self.temperature, top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens, stop=stop, seed=self.seed,
            user=self.user,
            # Usage is asked for always: a non-streamed completion reports it too.
            include_usage=True,
        )


# -- what goes back ------------------------------------------------------------------------


USAGE_SCHEMA = {
    "anyOf": [
        {"type": "null"},
        {"type": "object", "properties": {
            name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")
        }},
    ]
}
COMPLETION_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object",
            "properties": {
                "index": {"const": 0},
                "message": {
                    "type": "object",
                    "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
                    "required": ["role", "content"],
                },
                "finish_reason": {"enum": ["stop", "length"]},
            },
            "required": ["index", "message", "finish_reason"],
        }},
        "usage": USAGE_SCHEMA,
    },
    "required": ["id", "object", "created", "model", "choices"],
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Not streamed: the `chat.completion`. `stream: true`: `chat.completion.chunk` "
        "events, then `data: [DONE]`; an error after the start is an error object event.",
        "content": {
            "application/json": {"schema": COMPLETION_SCHEMA},
            "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
        },
        "headers": {"X-Session-ID": {"description": "The session's id.", "schema": {"type": "string"}}},
    },
}


def completion_id(session_id: str) -> str:
    return f"chatcmpl-{session_id}"


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    out = {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    if "total_tokens" not in out and isinstance(prompt, int) and isinstance(completion, int):
        out["total_tokens"] = prompt + completion
    return out


def finish_reason(usage: dict[str, Any] | None, max_tokens: int | None) -> str:
    """``length`` when the answer used every token the request allowed, else ``stop``.

    The workers do not relay the LLM's own finish reason; the usage tells the same for the
    request's ``max_tokens`` (a cap set only by LLM_MAX_TOKENS is not seen here).
    """
    used = (usage or {}).get("completion_tokens")
    return "length" if max_tokens and isinstance(used, int) and used >= max_tokens else "stop"


def completion(
    session_id: str, model: str, created: int, text: str, usage: dict[str, Any] | None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id(session_id), "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None, "finish_reason": finish_reason(usage, max_tokens),
        }],
        "usage": usage_of(usage),  # null when the LLM did not report it
        "system_fingerprint": None,
    }


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one streamed completion, as SSE bytes."""

    def __init__(
        self, session_id: str, model: str, *, include_usage: bool, max_tokens: int | None = None
    ) -> None:
        self.head = {
            "id": completion_id(session_id), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model, "system_fingerprint": None,
        }
        self.include_usage = include_usage
        self.max_tokens = max_tokens

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**self.head, "choices": choices, **extra}
        if self.include_usage and "usage" not in extra:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])

    def content(self, text: str) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        return self._event([choice])

    def finish(self, usage: dict[str, Any] | None) -> bytes:
        reason = finish_reason(usage, self.max_tokens)
        out = self._event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])
        if self.include_usage:
            out += self._event([], usage=usage_of(usage))
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(error: OpenAIError) -> bytes:
        return b"data: " + orjson.dumps(error_object(error)) + b"\n\n"


