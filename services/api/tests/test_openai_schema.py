"""The /v1 bodies: strictly typed as OpenAI types them, and documented with what is honoured."""

from __future__ import annotations

import jsonschema
import pytest
from llm_stream_api.app import create_app
from llm_stream_api.protocol.chat_completions import ChatCompletionRequest
from llm_stream_api.protocol.errors import OpenAIError
from llm_stream_api.protocol.responses import ResponseRequest
from llm_stream_api.settings import APISettings
from pydantic import ValidationError

PLAIN = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("extra", [
    {"temperature": "0.5"}, {"stream": 1}, {"max_tokens": True}, {"max_tokens": 2.5},
    {"max_tokens": 1_000_001}, {"seed": 2**60},
])
def test_known_fields_are_strictly_typed(extra: dict) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({**PLAIN, **extra})


def test_a_whole_number_is_an_integer() -> None:
    body = ChatCompletionRequest.model_validate({**PLAIN, "max_tokens": 5.0, "n": 1.0, "temperature": 1})
    assert body.max_tokens == 5 and isinstance(body.max_tokens, int) and body.temperature == 1.0
    assert ResponseRequest.model_validate({"input": "q", "max_output_tokens": 7.0}).max_output_tokens == 7


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app(APISettings(llm_max_tokens=100)).openapi()


def body_schema(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("extra", [
    {"n": 1}, {"n": 4}, {"tools": []}, {"tool_choice": "auto"}, {"response_format": {"type": "text"}},
    {"stream": True, "stream_options": {"include_usage": True}}, {"max_completion_tokens": 100},
    {"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}]}]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": True}}},
    {"response_format": {"type": "json_object"}}, {"logprobs": True, "top_logprobs": 3},
    {"presence_penalty": 1, "frequency_penalty": -1, "logit_bias": {"50256": -100}, "seed": 7},
    {"messages": [{"role": "user", "content": "q"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]},
])
def test_what_the_document_allows_is_honoured(document: dict, extra: dict) -> None:
    body = {**PLAIN, **extra}
    jsonschema.validate(body, body_schema(document, "/v1/chat/completions"))
    ChatCompletionRequest.model_validate(body).task_request()


@pytest.mark.parametrize("extra", [
    {"n": 5}, {"tools": [{}]}, {"tool_choice": "sometimes"}, {"presence_penalty": 3}, {"audio": {}},
    {"response_format": {"type": "xml"}}, {"stream_options": {"include_usage": True}},
    {"messages": [{"role": "function", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    {"max_tokens": 101}, {"top_logprobs": 21},
])
def test_what_is_refused_the_document_refuses(document: dict, extra: dict) -> None:
    body = {**PLAIN, **extra}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, body_schema(document, "/v1/chat/completions"))
    if "max_tokens" not in extra and "n" not in extra:  # settings, checked with the limits
        with pytest.raises((OpenAIError, ValidationError)):  # each a 400 naming the field
            ChatCompletionRequest.model_validate(body).task_request()


def test_responses_are_documented_with_their_errors(document: dict) -> None:
    for path, method in (("/v1/responses", "post"), ("/v1/responses/{response_id}", "get"),
                         ("/v1/models/{model_id}", "get")):
        responses = document["paths"][path][method]["responses"]
        assert "422" not in responses  # the dialect answers validation errors with 400
        assert responses["404" if method == "get" else "400"]["content"]["application/json"]["schema"][
            "required"] == ["error"]
    jsonschema.validate({"input": [{"role": "user", "content": "q"}]}, body_schema(document, "/v1/responses"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": [{"type": "file_search_call"}]}, body_schema(document, "/v1/responses"))
