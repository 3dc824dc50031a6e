"""The Responses dialect (``/v1/responses``): request bodies, response objects, stream events.

A response is a session: its id is the session id, so any replica can serve it. Its output
items (reasoning, the message, function calls) and their stream events come from the
answer's parts, numbered from positions (``responses_output``), so every replica gives every
event the same ``sequence_number`` and ``starting_after=N`` resumes anywhere. Its input
(message, function-call and function-call-output items, function tools, ``text.format``) is
``responses_input``'s. A cancelled response ends with ``response.incomplete`` and status
``cancelled``.
"""

from __future__ import annotations

from typing import Any, Literal

from mqcommon.parts import Part
from mqcommon.schemas import MODEL_PATTERN, SESSION_ID_PATTERN, ChatMessage
from pydantic import Field

from llm_stream_api.protocol import responses_input as inputs
from llm_stream_api.protocol import responses_output as outputs
from llm_stream_api.protocol.native import ServiceTier
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

FIRST_DELTA = outputs.FIRST_DELTA
LIMIT_NAMES = FieldNames(messages="input", max_tokens="max_output_tokens")
# What ``task_request`` takes as input: a string, or input items.
STRING = {"type": "string"}
INPUT_ITEMS = [
    {"type": "object", "properties": {
        "type": {"const": "message"}, "role": {"type": "string", "enum": ROLE_NAMES},
        "content": content_schema(inputs.TEXT_KINDS),
    }, "required": ["role"]},
    {"type": "object", "properties": {
        "type": {"const": "function_call"}, "call_id": STRING, "name": STRING, "arguments": STRING,
    }, "required": ["type", "call_id", "name", "arguments"]},
    {"type": "object", "properties": {
        "type": {"const": "function_call_output"}, "call_id": STRING, "output": STRING,
    }, "required": ["type", "call_id", "output"]},
    {"type": "object", "properties": {"type": {"const": "reasoning"}}, "required": ["type"]},
]
INPUT_ITEM = {"anyOf": INPUT_ITEMS}
INPUT_SCHEMA = {
    "anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": INPUT_ITEM, "minItems": 1}]
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
    tools: list[inputs.FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | inputs.NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: inputs.TextOptions | None = None
    reasoning: inputs.ReasoningOptions | None = None
    previous_response_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    store: bool | None = None
    # Known parameters we cannot honour: refused unless left at their defaults.
    conversation: Any = Field(default=None, json_schema_extra=null_or())
    prompt: Any = Field(default=None, json_schema_extra=null_or())
    top_logprobs: Integer | None = Field(default=None, json_schema_extra=null_or({"const": 0}))
    max_tool_calls: Integer | None = Field(default=None, json_schema_extra=null_or())
    # Accepted, with no effect here.
    metadata: dict[str, Any] | None = None
    truncation: str | None = None
    include: list[str] | None = None
    service_tier: ServiceTier | None = None
    stream_options: dict[str, Any] | None = None

    @property
    def stored(self) -> bool:
        return self.store is not False  # OpenAI stores a response unless told not to

    def turns(self, before: list[ChatMessage] | None = None) -> list[ChatMessage]:
        """The turns to answer, without the instructions: ``before`` (the conversation of the
        previous response, when continued), then this request's input."""
        if isinstance(self.input, str):
            return [*(before or []), turn("user", self.input, "input")]
        own = inputs.turns_of(self.input)
        return [*(before or []), *own]

    def refuse_what_we_cannot_honour(self) -> None:
        """Before any work on the request (the look-up of a previous response too)."""
        refuse_unless(
            self.conversation is None, "conversation",
            "send the conversation in input, or continue it with previous_response_id",
        )
        refuse_unless(self.prompt is None, "prompt", "prompt templates are not supported")
        refuse_unless(self.top_logprobs in (None, 0), "top_logprobs", "log probabilities are not available")
        refuse_unless(self.max_tool_calls is None, "max_tool_calls", "a limit on tool calls is not supported")

    def task_request(self, session_id: str, conversation: list[ChatMessage] | None = None) -> TaskRequest:
        """The task; ``conversation``: ``turns()``, unless given (a continued one)."""
        self.refuse_what_we_cannot_honour()
        turns = [turn("system", self.instructions, "instructions")] if self.instructions else []
        turns += self.turns() if conversation is None else conversation
        tools = [tool.to_chat() for tool in self.tools] if self.tools else None
        return TaskRequest(
            messages=tuple(turns), model=self.model, session_id=session_id,
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_output_tokens,
            user=self.user, include_usage=True, tools=tools, service_tier=self.service_tier,
            tool_choice=inputs.tool_choice(self.tool_choice) if tools else None,
            parallel_tool_calls=self.parallel_tool_calls if tools else None,
            response_format=inputs.response_format(self.text),
            reasoning_effort=self.reasoning.effort if self.reasoning else None,
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


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    details = usage.get("completion_tokens_details") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": details.get("reasoning_tokens") or 0},
        "total_tokens": usage.get("total_tokens", prompt + completion),
    }


class Meta:
    """What a response object says besides its output (known fully on the replica that created
    it; another replica reports the output and status it learns from the workers)."""

    __slots__ = ("background", "created_at", "instructions", "max_output_tokens", "metadata",
                 "model", "parallel_tool_calls", "previous_response_id", "reasoning", "store",
                 "temperature", "text", "tool_choice", "tools", "top_p", "user")

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
        self.tools = [t.model_dump(exclude_none=True) for t in body.tools] if body and body.tools else []
        choice = body.tool_choice if body else None
        self.tool_choice = choice.model_dump() if isinstance(choice, OpenAIBaseModel) else (choice or "auto")
        parallel = body.parallel_tool_calls if body else None
        self.parallel_tool_calls = True if parallel is None else parallel
        fmt = body.text.format if body and body.text else None
        self.text = {"format": fmt.model_dump(exclude_none=True, by_alias=True) if fmt else {"type": "text"}}
        self.reasoning = body.reasoning.model_dump(exclude_none=True) if body and body.reasoning else None
        self.previous_response_id = body.previous_response_id if body else None
        self.store = body.stored if body else True


def response_object(
    response_id: str, meta: Meta, status: str, text: str, parts: list[Part] | None = None,
    *, error: str | None = None, usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response; its output from the answer's ``parts`` (None: all ``text``)."""
    item_status = {"completed": "completed", "queued": "in_progress", "in_progress": "in_progress"}.get(
        status, "incomplete"
    )
    output = [] if status == "queued" else outputs.output(response_id, parts, text, item_status)
    return {
        "id": response_id, "object": "response", "created_at": meta.created_at, "status": status,
        "background": meta.background,
        "error": {"code": "server_error", "message": error} if status == "failed" else None,
        "incomplete_details": None, "instructions": meta.instructions,
        "max_output_tokens": meta.max_output_tokens, "metadata": meta.metadata, "model": meta.model,
        "output": output, "parallel_tool_calls": meta.parallel_tool_calls,
        "previous_response_id": meta.previous_response_id, "reasoning": meta.reasoning,
        "store": meta.store, "temperature": meta.temperature, "text": meta.text,
        "tool_choice": meta.tool_choice, "tools": meta.tools, "top_p": meta.top_p,
        "truncation": "disabled", "usage": usage_of(usage), "user": meta.user,
    }


def as_created(response: dict[str, Any]) -> dict[str, Any]:
    """The response as it was when it was created: what its first event carries, on a replay
    too (a client rebuilds the response from the events that follow)."""
    status = "queued" if response.get("background") else "in_progress"
    return {**response, "status": status, "output": [], "usage": None, "error": None}


def opening(response: dict[str, Any], after: int) -> list[bytes]:
    """Events 0 and 1 that come after ``after``; ``response`` as it was created."""
    events = [
        ("response.created", response),
        ("response.in_progress", {**response, "status": "in_progress"}),
    ]
    return [outputs.event(kind, number, response=body)
            for number, (kind, body) in enumerate(events) if number > after]


def error_event(sequence_number: int, error: OpenAIError) -> bytes:
    return outputs.event("error", sequence_number, code=error.code, message=error.message, param=error.param)
