"""Validation of a ``POST /v1/chat/completions`` body.

Only what the mock uses is checked; other OpenAI parameters (temperature, penalties, ...) are
accepted and ignored. ``n`` choices of plain text are produced (``answer.choice_prompt``);
``typed`` answers with tool calls, structured outputs, reasoning and log probabilities have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llm_stream_mockllm.directives import DirectiveError, Directives, parse_directives
from llm_stream_mockllm.typed import tool_prompt

# Parameters that change nothing here, recorded so tests can see what reached the LLM.
SAMPLING = (
    "temperature", "top_p", "stop", "seed", "user", "max_tokens", "max_completion_tokens", "tools",
    "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "reasoning_effort",
)


MAX_TOP_LOGPROBS = 5
MAX_CHOICES = 16


class BadRequest(ValueError):
    """The body cannot be served; the message goes back in an OpenAI 400 error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    prompt: str
    """Text of the last ``user`` message (text parts joined by newlines); "" if there is none."""
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_tokens: int
    """Whitespace-separated words over every message: a stand-in for the prompt token count."""
    directives: Directives
    sampling: dict[str, Any]
    """The generation parameters the request set (temperature, top_p, stop, seed, user, ...)."""
    roles: tuple[str, ...]
    """The role of every message, in order."""
    data: dict[str, Any]
    """The whole body (``typed`` reads tools, formats and log probabilities from it)."""
    choices: int = 1
    """``n``."""


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")

    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("Missing required parameter: 'messages'.", "messages")

    prompt = ""
    prompt_tokens = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"Invalid message at messages[{index}].", f"messages[{index}]")
        text = _text(message.get("content"), index)
        prompt_tokens += len(text.split())
        if message["role"] == "user":
            prompt = text

    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise BadRequest("max_tokens must be a positive integer.", "max_tokens")

    # Like an upstream with a lower limit than OpenAI's (20): its own 400 names the field.
    top = data.get("top_logprobs")
    if isinstance(top, int) and top > MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs: at most {MAX_TOP_LOGPROBS} here, not {top}.", "top_logprobs")

    choices = data.get("n", 1)
    if choices is None:
        choices = 1
    if not isinstance(choices, int) or isinstance(choices, bool) or not 1 <= choices <= MAX_CHOICES:
        raise BadRequest(f"n: from 1 to {MAX_CHOICES}.", "n")

    stream_options = data.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object.", "stream_options")

    try:
        directives = parse_directives(prompt)
    except DirectiveError as exc:
        raise BadRequest(str(exc), "messages") from None
    # An answer to tool results is computed on them (the user's directives still apply).
    prompt = tool_prompt(messages) or prompt

    return ChatRequest(
        sampling={name: data[name] for name in SAMPLING if name in data},
        roles=tuple(message["role"] for message in messages),
        prompt=prompt,
        model=model,
        stream=data.get("stream") is True,
        include_usage=stream_options.get("include_usage") is True,
        max_tokens=max_tokens,
        prompt_tokens=prompt_tokens,
        directives=directives,
        data=data,
        choices=choices,
    )


def _text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return "\n".join(parts)
    raise BadRequest(f"Invalid content at messages[{index}].", f"messages[{index}].content")
