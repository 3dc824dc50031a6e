"""Input limits: the same checks for every dialect, each refusal naming the field as sent."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from llm_stream_api import dialects
from llm_stream_api.dialects import NativeRoute, OpenAIRoute
from llm_stream_api.openapi import document as openapi
from llm_stream_api.protocol import responses
from llm_stream_api.protocol.chat_completions import ChatCompletionRequest
from llm_stream_api.protocol.errors import LimitExceeded
from llm_stream_api.protocol.native import ChatRequest
from llm_stream_api.protocol.task import NATIVE, FieldNames, appended_turns, from_native
from llm_stream_api.quota import input_limits as limits
from llm_stream_api.settings import APISettings


def settings(**values: object) -> APISettings:
    return APISettings(**values)


def refusal(wanted, config: APISettings, names: FieldNames = NATIVE) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as raised:
        limits.check(wanted, config, names)
    return raised.value


def conversation(count: int, content: str = "x") -> list[dict[str, str]]:
    return [{"role": "user", "content": content} for _ in range(count)]


def test_defaults_are_sane_and_take_an_ordinary_conversation() -> None:
    config = settings()
    assert (config.max_messages, config.max_total_chars, config.allowed_models) == (1000, 100_000, [])
    limits.check(from_native(ChatRequest(messages=conversation(1000, "y" * 100))), config)
    limits.check(from_native(ChatRequest(message="hi", model="anything", max_tokens=10**6)), config)


def test_message_count() -> None:
    config = settings(max_messages=3)
    limits.check(from_native(ChatRequest(messages=conversation(3))), config)
    # ``message`` after ``messages`` is one more turn.
    error = refusal(from_native(ChatRequest(messages=conversation(3), message="q")), config)
    assert (error.status, error.code, error.param) == (422, "limit_exceeded", "messages")
    assert "4 messages" in error.message and "MAX_MESSAGES (3)" in error.message


def test_total_characters_of_every_turn() -> None:
    config = settings(max_total_chars=10)
    limits.check(from_native(ChatRequest(messages=conversation(2, "abcde"))), config)
    error = refusal(from_native(ChatRequest(messages=conversation(2, "abcdef"))), config)
    assert error.param == "messages" and "12 characters" in error.message
    assert "MAX_TOTAL_CHARS (10)" in error.message
    alone = refusal(from_native(ChatRequest(message="x" * 11)), config)
    assert alone.param == "message"


def test_max_tokens_is_a_ceiling_and_none_is_left_to_the_workers() -> None:
    config = settings(llm_max_tokens=100)
    limits.check(from_native(ChatRequest(message="q", max_tokens=100)), config)
    limits.check(from_native(ChatRequest(message="q")), config)
    error = refusal(from_native(ChatRequest(message="q", max_tokens=101)), config)
    assert error.param == "max_tokens"
    assert "101" in error.message and "ceiling of 100 tokens" in error.message


def test_choices_are_bounded_by_max_choices() -> None:
    config = settings(max_choices=3)
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    wanted = ChatCompletionRequest.model_validate({**body, "n": 3}).task_request()
    assert wanted.n == 3 and wanted.task("s", None).v == 2  # a first-version worker refuses it
    limits.check(wanted, config)
    error = refusal(ChatCompletionRequest.model_validate({**body, "n": 4}).task_request(), config)
    assert error.param == "n" and "MAX_CHOICES (3)" in error.message
    assert ChatCompletionRequest.model_validate({**body, "n": 1}).task_request().n is None


def test_model_allow_list() -> None:
    config = settings(models_allowed=" gpt-4o-mini , llama3 ,")
    assert config.allowed_models == ["gpt-4o-mini", "llama3"]
    limits.check(from_native(ChatRequest(message="q", model="llama3")), config)
    limits.check(from_native(ChatRequest(message="q")), config)  # LLM_MODEL answers it
    error = refusal(from_native(ChatRequest(message="q", model="gpt-5")), config)
    assert (error.code, error.param) == ("model_not_allowed", "model")
    assert "'gpt-5'" in error.message and "gpt-4o-mini, llama3" in error.message


def test_an_allow_list_without_the_default_model_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="LLM_MODEL"):
        settings(models_allowed="llama3")
    assert settings(models_allowed="llama3", llm_model="llama3").allowed_models == ["llama3"]


def test_chat_completions_name_the_token_field_they_sent() -> None:
    config = settings(llm_max_tokens=5)
    plain = {"model": "m", "messages": conversation(1)}
    for field in ("max_tokens", "max_completion_tokens"):
        body = ChatCompletionRequest.model_validate({**plain, field: 6})
        assert refusal(body.task_request(), config, body.limit_names).param == field


def test_responses_name_input_and_max_output_tokens() -> None:
    config = settings(llm_max_tokens=5, max_messages=2)
    body = responses.ResponseRequest.model_validate({"input": "q", "max_output_tokens": 6})
    error = refusal(body.task_request("r"), config, responses.LIMIT_NAMES)
    assert error.param == "max_output_tokens"
    # ``instructions`` is a turn too.
    body = responses.ResponseRequest.model_validate(
        {"input": conversation(2), "instructions": "be brief"}
    )
    assert refusal(body.task_request("r"), config, responses.LIMIT_NAMES).param == "input"


@pytest.fixture
def app() -> TestClient:
    app = FastAPI()
    native, compatible = APIRouter(route_class=NativeRoute), APIRouter(route_class=OpenAIRoute)

    @native.post("/chat/async")
    @compatible.post("/v1/chat/completions")
    async def refuse() -> None:
        raise LimitExceeded("max_tokens", "over the ceiling")

    dialects.install(app, [native, compatible])
    app.include_router(native)
    app.include_router(compatible)
    return TestClient(app)


def test_both_dialects_say_which_field(app: TestClient) -> None:
    native = app.post("/chat/async")
    assert native.status_code == 422
    assert native.json() == {
        "error": "limit_exceeded", "message": "max_tokens: over the ceiling", "param": "max_tokens"
    }
    compatible = app.post("/v1/chat/completions")
    assert compatible.status_code == 400
    assert compatible.json() == {"error": {
        "message": "max_tokens: over the ceiling", "type": "invalid_request_error",
        "param": "max_tokens", "code": "limit_exceeded",
    }}


def test_the_document_states_the_limits_and_still_allows_null() -> None:
    schema = {"properties": ChatRequest.model_json_schema()["properties"]}
    document = {"paths": {"/chat": {"post": {
        "requestBody": {"content": {"application/json": {"schema": schema}}}
    }}}}
    limited = settings(max_messages=7, llm_max_tokens=64, models_allowed="gpt-4o-mini")
    openapi.complete(document, limited, set())
    properties = schema["properties"]
    assert properties["messages"]["maxItems"] == 7
    assert {"type": "integer", "maximum": 64, "minimum": 1} == {
        k: v for k, v in properties["max_tokens"]["anyOf"][0].items() if k in ("type", "maximum", "minimum")
    }
    assert properties["model"]["anyOf"][0]["enum"] == ["gpt-4o-mini"]
    assert {"type": "null"} in properties["model"]["anyOf"]


def test_the_native_message_added_after_messages_is_not_counted_against_their_bounds() -> None:
    """``messages`` may hold MAX_MESSAGES turns, as the OpenAPI document says, and ``message``
    beside them is one more: the bound is that of what the client sent in ``messages``."""
    settings = APISettings(max_messages=2)
    body = ChatRequest(message="and now?", messages=[{"role": "user", "content": "a"}] * 2)
    wanted = from_native(body)
    assert len(wanted.messages) == 3
    limits.check(wanted, settings, appended=appended_turns(body, wanted))
    with pytest.raises(LimitExceeded):
        limits.check(wanted, settings)
    over = ChatRequest(message="x", messages=[{"role": "user", "content": "a"}] * 3)
    with pytest.raises(LimitExceeded):
        limits.check(from_native(over), settings, appended=appended_turns(over, from_native(over)))


def test_the_body_limit_keeps_a_task_below_the_brokers_message_limit() -> None:
    from llm_stream_api.settings import BROKER_MESSAGE_MAX, TASK_OVERHEAD
    from pydantic import ValidationError

    assert settings(max_body_bytes=BROKER_MESSAGE_MAX - TASK_OVERHEAD).max_body_bytes
    with pytest.raises(ValidationError, match="max_body_bytes"):
        settings(max_body_bytes=BROKER_MESSAGE_MAX)
