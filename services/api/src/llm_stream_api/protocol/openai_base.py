"""What the OpenAI dialects share: the base model, the error object, turning turns into messages.

Unknown fields are accepted (the OpenAI API adds fields often, and clients send them) and
logged by name as ignored. Known fields are strictly typed, as OpenAI types them (``"0.5"`` is
not a temperature, ``1`` not a boolean). Fields we know but cannot honour are refused with a 400
naming the parameter (``Unsupported``), never silently accepted; ``documented_as`` states in the
OpenAPI document which values of such a field are honoured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import structlog
from mqcommon.schemas import ChatMessage
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from llm_stream_api.protocol.errors import APIError, OpenAIError, Unsupported

__all__ = ["OpenAIError", "Unsupported"]  # raised by both dialects' modules, found here too

log = structlog.get_logger(__name__)


def integral(value: Any) -> Any:
    # JSON has numbers, not integers: 5.0 is the integer 5 (JSON Schema says so too).
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(integral)]
"""An integer field of a strict model: a JSON number with no fraction. Bounds go inside the
``Annotated`` (``TokenCap``), or the document would not state them."""
TOKEN_CAP_MAX = 1_000_000  # as on the native routes; larger is no real request
TokenCap = Annotated[int, Field(ge=1, le=TOKEN_CAP_MAX), BeforeValidator(integral)]
Seed = Annotated[int, Field(ge=-(2**53), le=2**53), BeforeValidator(integral)]


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _log_ignored(self) -> OpenAIBaseModel:
        if self.model_extra:
            log.info("ignored fields", body=type(self).__name__, fields=sorted(self.model_extra))
        return self


OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


def openai_status(error: APIError) -> int:
    """OpenAI answers an invalid field with a 400, where the native routes answer 422."""
    return 400 if error.status == 422 else error.status


def error_object(error: APIError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``: what the official SDKs raise from."""
    status = openai_status(error)
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    kind = error.error_type or OPENAI_TYPES.get(status, fallback)
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


def documented_as(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A field's ``json_schema_extra``: its schema becomes ``schema`` (what is honoured)."""

    def replace(field_schema: dict[str, Any]) -> None:
        title, description = field_schema.get("title"), field_schema.get("description")
        field_schema.clear()
        field_schema.update(schema)
        field_schema.update({k: v for k, v in (("title", title), ("description", description)) if v})

    return replace


NULL = {"type": "null"}


def null_or(*schemas: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Only null (left out), or one of ``schemas``."""
    return documented_as({"anyOf": [*schemas, NULL]} if schemas else NULL)


# One event of a ``/v1`` stream, as an SSE parser sees it (``data`` is JSON, or ``[DONE]``).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}


def content_schema(kinds: tuple[str, ...]) -> dict[str, Any]:
    """A message's content as ``text_of`` takes it: a string, null, or text parts."""
    part = {
        "type": "object",
        "properties": {"type": {"enum": list(kinds)}, "text": {"type": "string"}},
        "required": ["type", "text"],
    }
    return {"anyOf": [{"type": "string"}, NULL, {"type": "array", "items": part}]}


def refuse_unless(condition: bool, param: str, why: str) -> None:
    if not condition:
        raise Unsupported(param, why)


def chat_content(
    content: Any, where: str, part_of: Callable[[Any, str], dict[str, Any]]
) -> str | list[dict[str, Any]]:
    """A message's content as the task carries it: text stays text (text parts joined by
    newlines); with an image, Chat Completions' parts. ``part_of(part, where)`` turns one part
    of the dialect into a Chat Completions part, or raises the 400 naming it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(400, f"{where}: expected a string or a list of content parts", param=where)
    parts = [part_of(part, f"{where}[{index}]") for index, part in enumerate(content)]
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def text_of(content: Any, where: str, *, kinds: tuple[str, ...] = ("text",)) -> str:
    """A message's content as one string: a string, or text parts (other parts are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in kinds:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Unsupported(f"{where}[{index}]", f"only text content is supported, not {kind!r}")
            text = part.get("text")
            if not isinstance(text, str):
                at = f"{where}[{index}].text"
                raise OpenAIError(400, f"{at}: expected a string", param=at)
            texts.append(text)
        return "\n".join(texts)
    raise OpenAIError(400, f"{where}: expected a string or a list of text parts", param=where)


ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant"
}
ROLE_NAMES = list(ROLES)


def turn(role: str, content: Any, where: str, *, kinds: tuple[str, ...] = ("text",)) -> ChatMessage:
    if role not in ROLES:
        raise Unsupported(
            f"{where}.role", f"role {role!r} is not supported (system, developer, user, assistant)"
        )
    return ChatMessage(role=ROLES[role], content=text_of(content, f"{where}.content", kinds=kinds))
