"""Every dialect's body becomes the same kind of task."""

from __future__ import annotations

import pytest
from llm_stream_api.protocol.chat_completions import ChatCompletionRequest
from llm_stream_api.protocol.errors import OpenAIError
from llm_stream_api.protocol.native import ChatRequest
from llm_stream_api.protocol.responses import ResponseRequest
from llm_stream_api.protocol.task import from_native
from mqcommon.schemas import ChatMessage
from pydantic import ValidationError


def test_message_alone_is_the_old_task() -> None:
    task = from_native(ChatRequest(message="hi", model="m")).task("s", "api-1")
    assert task.message == "hi" and task.messages is None and task.model == "m"
    assert task.conversation() == [{"role": "user", "content": "hi"}]


def test_message_is_added_after_messages_unless_they_end_with_it() -> None:
    history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    appended = from_native(ChatRequest(messages=history, message="q2"))
    assert [m.content for m in appended.messages] == ["q1", "a1", "q2"]
    page = from_native(ChatRequest(messages=[*history, {"role": "user", "content": "q2"}], message="q2"))
    assert [m.content for m in page.messages] == ["q1", "a1", "q2"]


def test_a_conversation_task_also_carries_its_last_question_for_older_workers() -> None:
    wanted = from_native(ChatRequest(
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        temperature=0.5, stop="END", max_tokens=9,
    ))
    task = wanted.task("s", None)
    assert task.message == "q" and task.stop == ("END",) and task.max_tokens == 9 and task.temperature == 0.5


def test_chat_completions_become_a_task_with_usage() -> None:
    body = ChatCompletionRequest.model_validate({
        "model": "m", "messages": [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ],
        "max_completion_tokens": 5, "max_tokens": 50, "stop": "x", "seed": 1, "user": "u",
        "some_future_field": True,
    })
    wanted = body.task_request()
    assert wanted.messages == (
        ChatMessage(role="system", content="rules"), ChatMessage(role="user", content="a\nb")
    )
    assert wanted.max_tokens == 5 and wanted.stop == ("x",) and wanted.include_usage


@pytest.mark.parametrize(("extra", "param"), [
    ({"audio": {}}, "audio"), ({"functions": [{}]}, "functions"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]}, "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
])
def test_chat_completions_refuse_what_cannot_be_honoured(extra: dict, param: str) -> None:
    plain = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    body = ChatCompletionRequest.model_validate({**plain, **extra})
    with pytest.raises(OpenAIError) as raised:
        body.task_request()
    assert raised.value.status == 400 and raised.value.param == param


def test_responses_input_becomes_a_conversation() -> None:
    body = ResponseRequest.model_validate({
        "model": "m", "instructions": "be brief", "max_output_tokens": 7,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "q"}]},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
                  {"role": "user", "content": "q2"}],
    })
    wanted = body.task_request("resp_1")
    assert [(m.role, m.content) for m in wanted.messages] == [
        ("system", "be brief"), ("user", "q"), ("assistant", "a"), ("user", "q2")
    ]
    assert wanted.session_id == "resp_1" and wanted.max_tokens == 7
    with pytest.raises(OpenAIError):
        tool_output = {"type": "function_call_output", "output": "x"}
        ResponseRequest.model_validate({"input": [tool_output]}).task_request("r")


@pytest.mark.parametrize("field", ["temperature", "top_p", "max_tokens", "seed"])
@pytest.mark.parametrize("value", [True, "1"])
def test_native_generation_parameters_are_json_numbers_only(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match="must be a number"):
        ChatRequest.model_validate({"message": "hi", field: value})


def test_an_image_part_is_passed_on_and_a_bad_detail_is_refused_by_name() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    content = [{"type": "text", "text": "what"}, image]
    plain = {"model": "m", "messages": [{"role": "user", "content": content}]}
    (turn,) = ChatCompletionRequest.model_validate(plain).task_request().messages
    assert turn.content == [{"type": "text", "text": "what"}, image]
    bad = {**image, "image_url": {"url": "u", "detail": {}}}
    body = ChatCompletionRequest.model_validate({**plain, "messages": [{"role": "user", "content": [bad]}]})
    with pytest.raises(OpenAIError) as raised:
        body.task_request()
    assert raised.value.param == "messages[0].content[0].image_url.detail"
