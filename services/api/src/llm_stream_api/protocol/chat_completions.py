"""The Chat Completions dialect (``POST /v1/chat/completions``): bodies, chunks, completions.

What we honour goes into the task: the conversation (system, developer, user, assistant and
tool turns; text and image content; an assistant's tool calls), ``temperature``, ``top_p``,
``max_tokens`` or ``max_completion_tokens``, ``stop``, ``seed``, ``user``, ``tools``,
``tool_choice``, ``parallel_tool_calls``, ``response_format``, ``logprobs``, ``top_logprobs``,
``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``reasoning_effort``, ``n`` (each
choice under its own keys, ``choice.<n>.*``), ``stream`` and ``stream_options.include_usage``;
the LLM's 400 for one it does not support is the client's.
What we cannot honour is refused by name (``refuse_what_we_cannot_honour``), and the fields'
schemas say which values are honoured. The answer's parts (mqcommon.parts) become
``content``, ``reasoning_content``, ``refusal``, ``tool_calls`` and ``logprobs``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import orjson
from mqcommon.parts import CONTENT, FINISH, LOGPROBS, REASONING, REFUSAL, Part, choice_of, of_key, tool_of
from mqcommon.schemas import MODEL_PATTERN, ChatMessage
from pydantic import BeforeValidator, Field, JsonValue, StringConstraints, field_validator

from llm_stream_api.protocol.native import ServiceTier
from llm_stream_api.protocol.openai_base import (
    NULL,
    ROLE_NAMES,
    SSE_EVENT_SCHEMA,
    OpenAIBaseModel,
    OpenAIError,
    Seed,
    TokenCap,
    Unsupported,
    chat_content,
    documented_as,
    error_object,
    integral,
    null_or,
    refuse_unless,
)
from llm_stream_api.protocol.task import FieldNames, TaskRequest

TEXT_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
             "required": ["type", "text"]}
IMAGE_PART = {"type": "object", "properties": {
    "type": {"const": "image_url"},
    "image_url": {"type": "object", "properties": {
        "url": {"type": "string"}, "detail": {"enum": ["auto", "low", "high"]},
    }, "required": ["url"]},
}, "required": ["type", "image_url"]}
CONTENT_SCHEMA = {
    "anyOf": [{"type": "string"}, NULL, {"type": "array", "items": {"anyOf": [TEXT_PART, IMAGE_PART]}}]
}
TOOL_CALL_SCHEMA = {"type": "object", "properties": {
    "id": {"type": "string"}, "type": {"const": "function"},
    "function": {
        "type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        "required": ["name", "arguments"],
    },
}, "required": ["id", "type", "function"]}
CHAT_ROLES = [*ROLE_NAMES, "tool"]


class Message(OpenAIBaseModel):
    role: str = Field(json_schema_extra=documented_as({"type": "string", "enum": CHAT_ROLES}))
    content: Any = Field(default=None, json_schema_extra=documented_as(CONTENT_SCHEMA))
    name: str | None = None
    tool_calls: Any = Field(
        default=None, json_schema_extra=null_or({"type": "array", "items": TOOL_CALL_SCHEMA})
    )
    tool_call_id: str | None = None
    function_call: Any = Field(default=None, json_schema_extra=null_or())

    def to_turn(self, where: str) -> ChatMessage:
        """The turn as the task carries it; a malformed content or tool call is a 400."""
        if self.role not in CHAT_ROLES:
            raise Unsupported(
                f"{where}.role", f"role {self.role!r} is not supported ({', '.join(CHAT_ROLES)})"
            )
        content: str | list[dict[str, Any]] | None = _content(self.content, f"{where}.content")
        calls = None
        if self.tool_calls is not None:
            calls = _tool_calls(self.tool_calls, f"{where}.tool_calls")
            if content == "":
                content = None  # an assistant turn of tool calls alone
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(
            role=role, content=content, tool_calls=calls, tool_call_id=self.tool_call_id, name=self.name,  # type: ignore[arg-type]
        )


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    return chat_content(content, where, _part)


def _part(part: Any, at: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(
        part["image_url"].get("url"), str
    ):
        image = {"url": part["image_url"]["url"]}
        if "detail" in part["image_url"]:
            detail = part["image_url"]["detail"]
            if detail not in ("auto", "low", "high"):
                where_detail = f"{at}.image_url.detail"
                raise OpenAIError(400, f"{where_detail}: auto, low or high", param=where_detail)
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind in ("text", "image_url"):
        raise OpenAIError(400, f"{at}: a {kind} part needs its {kind}", param=at)
    raise Unsupported(at, f"content parts are text or image_url, not {kind or type(part).__name__!r}")


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise OpenAIError(400, f"{where}: expected a list of tool calls", param=where)
    out = []
    for index, call in enumerate(calls):
        at = f"{where}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(call, dict) and isinstance(call.get("id"), str) and call.get("type") == "function"
                and isinstance(function, dict) and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), str)):
            raise OpenAIError(
                400, f"{at}: a tool call is {{id, type: function, function: {{name, arguments}}}}", param=at
            )
        out.append({"id": call["id"], "type": "function",
                    "function": {"name": function["name"], "arguments": function["arguments"]}})
    return out


ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TopLogprobs = Annotated[int, Field(ge=0, le=20), BeforeValidator(integral)]
Choices = Annotated[int, Field(ge=1, le=128), BeforeValidator(integral)]  # at most MAX_CHOICES


class FunctionDefinition(OpenAIBaseModel):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(OpenAIBaseModel):
    name: ToolName


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionName


class TextFormat(OpenAIBaseModel):
    type: Literal["text"]


class JSONObjectFormat(OpenAIBaseModel):
    type: Literal["json_object"]


class JSONSchema(OpenAIBaseModel):
    name: ToolName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(OpenAIBaseModel):
    type: Literal["json_schema"]
    json_schema: JSONSchema


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
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JSONObjectFormat | JSONSchemaFormat | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=300
    )
    reasoning_effort: str | None = Field(default=None, max_length=32)
    n: Choices | None = None
    functions: list[Any] | None = Field(
        default=None, json_schema_extra=null_or({"type": "array", "maxItems": 0})
    )
    function_call: Any = Field(default=None, json_schema_extra=null_or({"enum": ["none", "auto"]}))
    audio: Any = Field(default=None, json_schema_extra=null_or())
    modalities: list[str] | None = Field(default=None, json_schema_extra=null_or({"const": ["text"]}))
    prediction: Any = Field(default=None, json_schema_extra=null_or())
    web_search_options: Any = Field(default=None, json_schema_extra=null_or())
    # Accepted, with no effect here.
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: ServiceTier | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def refuse_what_we_cannot_honour(self) -> None:
        refuse_unless(not self.functions, "functions", "function calls are not supported")
        refuse_unless(
            self.function_call in (None, "none", "auto"), "function_call", "function calls are not supported"
        )
        refuse_unless(self.audio is None, "audio", "audio output is not supported")
        refuse_unless(self.modalities in (None, ["text"]), "modalities", "only text output is supported")
        refuse_unless(self.prediction is None, "prediction", "predicted outputs are not supported")
        refuse_unless(self.web_search_options is None, "web_search_options", "web search is not supported")
        for index, message in enumerate(self.messages):
            where = f"messages[{index}]"
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
        turns = tuple(m.to_turn(f"messages[{i}]") for i, m in enumerate(self.messages))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop) if self.stop else None
        return TaskRequest(
            messages=turns, model=self.model, temperature=self.temperature, top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens, stop=stop, seed=self.seed,
            user=self.user, service_tier=self.service_tier,
            # Usage is asked for always: a non-streamed completion reports it too.
            include_usage=True,
            tools=[tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            # Without tools there is nothing to choose from (an empty list is no tools either).
            tool_choice=(self.tool_choice if isinstance(self.tool_choice, str) or self.tool_choice is None
                         else self.tool_choice.model_dump(exclude_none=True)) if self.tools else None,
            parallel_tool_calls=self.parallel_tool_calls if self.tools else None,
            response_format=self.response_format.model_dump(exclude_none=True, by_alias=True)
            if self.response_format is not None and self.response_format.type != "text" else None,
            logprobs=self.logprobs or None,
            top_logprobs=self.top_logprobs if self.logprobs else None,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias or None, reasoning_effort=self.reasoning_effort,
            n=self.n if self.n and self.n > 1 else None,
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
        "choices": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "message": {
                    "type": "object",
                    "properties": {
                        "role": {"const": "assistant"}, "content": {"type": ["string", "null"]},
                        "refusal": {"type": ["string", "null"]},
                        "tool_calls": {"type": "array", "items": TOOL_CALL_SCHEMA},
                        "reasoning_content": {"type": "string"},
                    },
                    "required": ["role", "content"],
                },
                "finish_reason": {
                    "enum": ["stop", "length", "tool_calls", "content_filter", "function_call"]
                },
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


def finish_reason(usage: dict[str, Any] | None, max_tokens: int | None, finish: str | None = None,
                  tool_calls: bool = False) -> str:
    """The LLM's own finish reason when a worker relayed it; else ``tool_calls`` for an answer
    of tool calls, ``length`` when the answer used every token the request allowed, ``stop``.

    (A cap set only by LLM_MAX_TOKENS is not seen here.)
    """
    if finish:
        return finish
    if tool_calls:
        return "tool_calls"
    used = (usage or {}).get("completion_tokens")
    return "length" if max_tokens and isinstance(used, int) and used >= max_tokens else "stop"


def logprob_entries(text: str) -> list[Any]:
    """The ``logprobs.content`` entries of a logprobs part (one JSON object per line)."""
    return [orjson.loads(line) for line in text.split("\n") if line]


def message_of(parts: list[Part] | None, text: str) -> tuple[dict[str, Any], list[Any] | None]:
    """The assistant message of an answer (its ``parts``; None: all ``text``), and its
    log probabilities when it has them."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if parts is None:
        return message, None
    content, reasoning, refusal, logprobs = [], [], [], []
    calls: dict[int, dict[str, Any]] = {}
    for key, value in parts:
        if key == CONTENT:
            content.append(value)
        elif key == REASONING:
            reasoning.append(value)
        elif key == REFUSAL:
            refusal.append(value)
        elif key == LOGPROBS:
            logprobs.extend(logprob_entries(value))
        elif (tool := tool_of(key)) is not None:
            call = calls.setdefault(
                tool[0], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if tool[1] == "id":
                call["id"] += value
            else:
                call["function"]["name" if tool[1] == "name" else "arguments"] += value
    message["content"] = "".join(content) if content or not calls else None
    message["refusal"] = "".join(refusal) or None
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message, logprobs or None


def by_choice(parts: list[Part]) -> dict[int, list[Part]]:
    """An answer's parts per choice (``n``), each under its plain keys; choice 0 always."""
    out: dict[int, list[Part]] = {0: []}
    for key, text in parts:
        index, inner = choice_of(key)
        out.setdefault(index, []).append((inner, text))
    return out


def completion(
    session_id: str, model: str, created: int, text: str, usage: dict[str, Any] | None,
    max_tokens: int | None = None, parts: list[Part] | None = None, finish: str | None = None,
    *, choices: int = 1,
) -> dict[str, Any]:
    """The ``chat.completion``; with ``choices`` above 1, each choice from its own parts."""
    own = by_choice(parts) if parts is not None else {0: None}
    out = []
    for index in range(choices):
        message, logprobs = message_of(own.get(index, []) if parts is not None else None, text)
        ended = finish if index == 0 else of_key(own.get(index) or [], FINISH) or None
        # Usage counts every choice: it says whether the cap was reached only for one.
        out.append({
            "index": index, "message": message,
            "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
            "finish_reason": finish_reason(usage if choices == 1 else None, max_tokens, ended,
                                           "tool_calls" in message),
        })
    return {
        "id": completion_id(session_id), "object": "chat.completion", "created": created, "model": model,
        "choices": out,
        "usage": usage_of(usage),  # null when the LLM did not report it
        "system_fingerprint": None,
    }


class ChunkWriter:
    """The ``chat.completion.chunk`` events of one streamed completion, as SSE bytes."""

    def __init__(
        self, session_id: str, model: str, *, include_usage: bool, max_tokens: int | None = None,
        choices: int = 1,
    ) -> None:
        self.head = {
            "id": completion_id(session_id), "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model, "system_fingerprint": None,
        }
        self.include_usage = include_usage
        self.max_tokens = max_tokens
        self.choices = choices
        self.tool_calls: set[int] = set()  # choices that sent some: their finish reason is tool_calls
        self.finishes: dict[int, str] = {}  # the finish reasons of choices above 0, as they come

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**self.head, "choices": choices, **extra}
        if self.include_usage and "usage" not in extra:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        """Every choice opens at once, in order, as clients index choices by arrival."""
        return b"".join(
            self._event([_choice({"role": "assistant", "content": ""}, index=index)])
            for index in range(self.choices)
        )

    def content(self, text: str) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        return self._event([choice])

    def parts(self, parts: list[Part]) -> bytes:
        """One chunk per delta, as OpenAI streams them: a tool call's id, name and first
        arguments in one delta, log probabilities on the content they belong to."""
        choices: list[dict[str, Any]] = []
        for full_key, text in parts:
            number, key = choice_of(full_key)
            if number >= self.choices:
                continue  # a choice nobody asked for
            last = choices[-1] if choices and choices[-1]["index"] == number else None
            if key == FINISH:
                self.finishes[number] = self.finishes.get(number, "") + text
            elif key == LOGPROBS:
                entries = logprob_entries(text)
                if last is not None and last["logprobs"] is None and "content" in last["delta"]:
                    last["logprobs"] = {"content": entries, "refusal": None}
                else:
                    choices.append(_choice({}, {"content": entries, "refusal": None}, index=number))
            elif (tool := tool_of(key)) is not None:
                self.tool_calls.add(number)
                index, field = tool
                calls = last["delta"].get("tool_calls") if last is not None else None
                call = calls[0] if calls and calls[0]["index"] == index else None
                if call is None or (field == "id" and "id" in call) or (
                        field == "name" and "name" in call["function"]) or (
                        field != "args" and call["function"].get("arguments")):
                    call = {"index": index, "function": {}}
                    choices.append(_choice({"tool_calls": [call]}, index=number))
                if field == "id":
                    call.update({"id": text, "type": "function"})
                    call["function"].setdefault("arguments", "")
                elif field == "name":
                    call["function"]["name"] = text
                    call["function"].setdefault("arguments", "")
                else:
                    call["function"]["arguments"] = call["function"].get("arguments", "") + text
            else:
                name = {CONTENT: "content", REASONING: "reasoning_content", REFUSAL: "refusal"}.get(key)
                if name is not None:
                    choices.append(_choice({name: text}, index=number))
        return b"".join(self._event([choice]) for choice in choices)

    def finish(self, usage: dict[str, Any] | None, finish: str | None = None) -> bytes:
        # Usage counts every choice: it says whether the cap was reached only for one.
        cap_usage = usage if self.choices == 1 else None
        reason = finish_reason(cap_usage, self.max_tokens, finish, 0 in self.tool_calls)
        out = self._event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])
        for number in range(1, self.choices):
            reason = finish_reason(None, None, self.finishes.get(number), number in self.tool_calls)
            out += self._event([{"index": number, "delta": {}, "logprobs": None, "finish_reason": reason}])
        if self.include_usage:
            out += self._event([], usage=usage_of(usage))
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(error: OpenAIError) -> bytes:
        return b"data: " + orjson.dumps(error_object(error)) + b"\n\n"


def _choice(
    delta: dict[str, Any], logprobs: dict[str, Any] | None = None, *, index: int = 0
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
