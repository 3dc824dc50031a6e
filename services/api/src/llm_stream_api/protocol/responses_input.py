"""The Responses dialect's input, as the turns and parameters of a task.

Input items become chat turns: a ``message`` item a turn of its role (text, and images as
``image_url`` parts), the ``function_call`` items of one model turn an assistant turn with
``tool_calls``, and a ``function_call_output`` a ``tool`` turn. A ``reasoning`` item is
dropped: chat upstreams take no reasoning as input. Function tools, ``tool_choice`` and
``text.format`` become their Chat Completions forms, passed through to the LLM.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mqcommon.schemas import ChatMessage
from pydantic import Field, StringConstraints

from llm_stream_api.protocol.openai_base import ROLES, OpenAIBaseModel, OpenAIError, Unsupported, chat_content

ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TEXT_KINDS = ("input_text", "output_text", "text")
DETAILS = ("auto", "low", "high")


class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def to_chat(self) -> dict[str, Any]:
        function = self.model_dump(exclude_none=True, exclude={"type"})
        return {"type": "function", "function": function}


class NamedFunction(OpenAIBaseModel):
    type: Literal["function"]
    name: ToolName


class TextFormat(OpenAIBaseModel):
    type: Literal["text"]


class JSONObjectFormat(OpenAIBaseModel):
    type: Literal["json_object"]


class JSONSchemaFormat(OpenAIBaseModel):
    type: Literal["json_schema"]
    name: ToolName
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextOptions(OpenAIBaseModel):
    format: TextFormat | JSONObjectFormat | JSONSchemaFormat | None = None
    verbosity: str | None = None


class ReasoningOptions(OpenAIBaseModel):
    effort: str | None = Field(default=None, max_length=32)
    summary: str | None = None
    generate_summary: str | None = None


def response_format(text: TextOptions | None) -> dict[str, Any] | None:
    """``text.format`` as Chat Completions' ``response_format`` (None for plain text)."""
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if isinstance(fmt, JSONObjectFormat):
        return {"type": "json_object"}
    schema = fmt.model_dump(exclude_none=True, by_alias=True, exclude={"type"})
    return {"type": "json_schema", "json_schema": schema}


def tool_choice(choice: str | NamedFunction | None) -> str | dict[str, Any] | None:
    if isinstance(choice, NamedFunction):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def content_of(content: Any, where: str) -> str | list[dict[str, Any]]:
    return chat_content(content, where, _part)


def _part(part: Any, at: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_KINDS:
        if not isinstance(part.get("text"), str):
            raise OpenAIError(400, f"{at}.text: expected a string", param=f"{at}.text")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        return _image(part, at)
    what = kind or type(part).__name__
    raise Unsupported(at, f"content parts are input_text or input_image, not {what!r}")


def _image(part: dict[str, Any], at: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str):
        if part.get("file_id") is not None:
            raise Unsupported(f"{at}.file_id", "files are not supported; send the image as image_url")
        raise OpenAIError(400, f"{at}.image_url: required (a URL or a data URL)", param=f"{at}.image_url")
    image = {"url": url}
    detail = part.get("detail")
    if detail is not None:
        if detail not in DETAILS:
            raise OpenAIError(400, f"{at}.detail: auto, low or high", param=f"{at}.detail")
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _text_field(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise OpenAIError(400, f"{where}.{name}: required (a string)", param=f"{where}.{name}")
    return value


def turns_of(items: list[Any]) -> list[ChatMessage]:
    """The chat turns of ``input`` given as a list of items."""
    turns: list[ChatMessage] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise OpenAIError(400, f"{where}: expected an input item (an object)", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str):
                raise OpenAIError(400, f"{where}.role: required", param=f"{where}.role")
            if role not in ROLES:
                raise Unsupported(
                    f"{where}.role", f"role {role!r} is not supported (system, developer, user, assistant)"
                )
            content = content_of(item.get("content"), f"{where}.content")
            turns.append(ChatMessage(role=ROLES[role], content=content))
        elif kind == "function_call":
            call = {"id": _text_field(item, "call_id", where), "type": "function", "function": {
                "name": _text_field(item, "name", where), "arguments": _text_field(item, "arguments", where),
            }}
            last = turns[-1] if turns else None
            if last is not None and last.role == "assistant" and last.tool_calls is not None:
                turns[-1] = last.model_copy(update={"tool_calls": [*last.tool_calls, call]})
            else:  # the calls of one model turn are one assistant turn
                turns.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else content_of(output, f"{where}.output")
            if not isinstance(text, str):
                raise Unsupported(f"{where}.output", "a function call's output is text")
            call_id = _text_field(item, "call_id", where)
            turns.append(ChatMessage(role="tool", content=text, tool_call_id=call_id))
        elif kind == "reasoning":
            continue  # the upstream takes no reasoning as input
        else:
            raise Unsupported(
                where,
                f"input items are message, function_call, function_call_output or reasoning, not {kind!r}",
            )
    return turns
