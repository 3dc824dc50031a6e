"""What a client asks the LLM for, whatever its dialect (native, Chat Completions, Responses).

Each dialect's protocol module turns its body into a ``TaskRequest``: the conversation, the
model and the generation parameters. The session service (``service.sessions``) claims the
session id and queues it as a ``ChatTask``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mqcommon.schemas import ChatMessage, ChatTask

from llm_stream_api.protocol.native import ChatRequest


@dataclass(frozen=True, slots=True)
class FieldNames:
    """What a dialect calls the fields the input limits are about."""

    messages: str = "messages"
    max_tokens: str = "max_tokens"
    model: str = "model"


NATIVE = FieldNames()


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a client asks the LLM for, in no particular dialect."""

    message: str | None = None  # one user turn (the first format)
    messages: tuple[ChatMessage, ...] | None = None  # or a whole conversation
    model: str | None = None
    session_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    user: str | None = None
    include_usage: bool | None = None
    owner: str | None = None  # the key id of the request (``keys``), set when it is queued
    # What the OpenAI dialects pass on to the LLM as given (ChatTask.parameters).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    n: int | None = None  # choices, when more than one
    # The lane it asks for in its model's pool (``quota.service_tiers``): where it waits, not
    # what the LLM is told.
    service_tier: str | None = None

    def task(self, session_id: str, reply_to: str | None) -> ChatTask:
        given = {
            f.name: getattr(self, f.name) for f in fields(self)
            if f.name not in ("session_id", "message", "service_tier") and getattr(self, f.name) is not None
        }
        # A conversation also carries its last user turn as ``message``: a worker that predates
        # conversations still answers it.
        message = self.message or _last_user_turn(self.messages)
        task = ChatTask(session_id=session_id, message=message, reply_to=reply_to, **given)
        # A task a worker of the first version would answer without its tools or format says
        # so: such a worker refuses it, and the client hears why.
        return task.model_copy(update={"v": 2}) if task.typed() else task


def _last_user_turn(messages: tuple[ChatMessage, ...] | None) -> str | None:
    for turn in reversed(messages or ()):
        if turn.role == "user":
            return turn.text or None
    return None


def from_native(body: ChatRequest) -> TaskRequest:
    """``POST /chat`` and ``/chat/async``: ``message`` alone, or ``messages``.

    With both, ``message`` is the latest question: it is added as the last user turn unless
    ``messages`` already ends with it (what the chat page sends).
    """
    messages = None
    if body.messages is not None:
        turns = [ChatMessage(role=t.role, content=t.content) for t in body.messages]
        last = turns[-1]
        if body.message is not None and not (last.role == "user" and last.content == body.message):
            turns.append(ChatMessage(role="user", content=body.message))
        messages = tuple(turns)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop) if body.stop else None
    return TaskRequest(
        message=body.message, messages=messages, model=body.model, session_id=body.session_id,
        temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens, stop=stop,
        seed=body.seed, user=body.user, service_tier=body.service_tier,
    )


def appended_turns(body: ChatRequest, wanted: TaskRequest) -> int:
    """1 when the native ``message`` was added after the ``messages`` the client sent."""
    if body.messages is None or wanted.messages is None:
        return 0
    return len(wanted.messages) - len(body.messages)
