"""OpenAI wire format: chat completion chunks, completions, model lists and error bodies.

Chunks are built from byte templates made once per response, so that a token costs one
``orjson.dumps`` of its text and a concatenation; the field order follows what OpenAI sends.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

DONE = b"data: [DONE]\n\n"
FINGERPRINT = "fp_mock"

ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", None),
    405: ("invalid_request_error", None),
    409: ("invalid_request_error", None),
    413: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers a failed request."""
    kind, default_code = ERROR_TYPES.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    error = {"message": message, "type": kind, "param": param, "code": code or default_code}
    return orjson.dumps({"error": error})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkEncoder:
    """Server-sent events of one streamed ``chat.completion.chunk`` response."""

    __slots__ = ("_content_head", "_content_tail", "_head", "_tail", "_usage_null")

    def __init__(self, completion_id: str, created: int, model: str, *, include_usage: bool) -> None:
        self._head = (
            b'data: {"id":'
            + orjson.dumps(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"system_fingerprint":"'
            + FINGERPRINT.encode()
            + b'","choices":'
        )
        self._usage_null = b',"usage":null' if include_usage else b""
        self._tail = self._usage_null + b"}\n\n"
        self._content_head = self._head + b'[{"index":0,"delta":{"content":'
        self._content_tail = b'},"logprobs":null,"finish_reason":null}]' + self._tail

    def role(self) -> bytes:
        """The opening chunk: the assistant role and empty content."""
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
            + b'"logprobs":null,"finish_reason":null}]'
            + self._tail
        )

    def content(self, text: str) -> bytes:
        return self._content_head + orjson.dumps(text) + self._content_tail

    def delta(self, delta: dict[str, object], logprobs: dict[str, object] | None = None) -> bytes:
        """A chunk of any delta (tool calls, reasoning, ...) with its log probabilities."""
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        return self._head + orjson.dumps([choice]) + self._tail

    def finish(self, reason: str, index: int = 0) -> bytes:
        return (
            self._head
            + b'[{"index":%d,"delta":{},"logprobs":null,"finish_reason":"' % index
            + reason.encode()
            + b'"}]'
            + self._tail
        )

    def choice_content(self, index: int, text: str) -> bytes:
        """Content of choice ``index`` (of a request with ``n`` above 1)."""
        choice = {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        return self._head + orjson.dumps([choice]) + self._tail

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The extra last chunk sent when ``stream_options.include_usage`` is true."""
        return self._head + b'[],"usage":' + orjson.dumps(usage(prompt_tokens, completion_tokens)) + b"}\n\n"


def completion(
    completion_id: str,
    created: int,
    model: str,
    text: str | list[str],
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A non-streamed ``chat.completion``; ``text`` a list: one choice each."""
    texts = [text] if isinstance(text, str) else text
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for index, answer in enumerate(texts)
            ],
            "usage": usage(prompt_tokens, completion_tokens),
            "system_fingerprint": FINGERPRINT,
        }
    )


def typed_completion(
    completion_id: str, created: int, model: str, message: dict[str, object],
    logprobs: list[dict[str, object]], finish_reason: str, prompt_tokens: int, completion_tokens: int,
) -> bytes:
    """A non-streamed ``chat.completion`` whose message has tool calls, reasoning, ..."""
    return orjson.dumps({
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0, "message": message,
            "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
            "finish_reason": finish_reason,
        }],
        "usage": usage(prompt_tokens, completion_tokens), "system_fingerprint": FINGERPRINT,
    })


def model_list(model_ids: Sequence[str], created: int) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": created, "owned_by": "llm-stream-mock"}
                for model_id in model_ids
            ],
        }
    )
