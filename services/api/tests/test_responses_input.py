"""Responses input items and options as the turns and parameters of a task."""

from __future__ import annotations

import pytest
from llm_stream_api.protocol.openai_base import OpenAIError
from llm_stream_api.protocol.responses import ResponseRequest


def request(**fields: object) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "m", **fields})


def test_a_tool_loop_in_items_becomes_chat_turns() -> None:
    body = request(
        instructions="be brief",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "noon"}]},
        ],
    )
    task = body.task_request("resp_1")
    turns = [turn.to_llm() for turn in task.messages or ()]
    assert turns[0] == {"role": "system", "content": "be brief"}
    assert turns[1]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    assert turns[2]["role"] == "assistant" and turns[2]["content"] is None
    assert [call["id"] for call in turns[2]["tool_calls"]] == ["c1", "c2"]
    assert turns[3:] == [{"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                         {"role": "tool", "content": "noon", "tool_call_id": "c2"}]
    # The stored conversation leaves the instructions out, as OpenAI's continuation does.
    assert [turn.role for turn in body.turns()] == ["user", "assistant", "tool", "tool"]


def test_tools_choice_and_formats_become_their_chat_forms() -> None:
    task = request(
        input="q",
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        tool_choice={"type": "function", "name": "f"}, parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
        reasoning={"effort": "low"},
    ).task_request("resp_1")
    assert task.tools == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}, "strict": True}}]
    assert task.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert task.parallel_tool_calls is False and task.reasoning_effort == "low"
    assert task.response_format == {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object"}, "strict": True}}
    assert request(input="q", text={"format": {"type": "text"}}).task_request("r").response_format is None


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "item_reference", "id": "x"}, "input[0]"),
    ({"type": "function_call", "call_id": "c", "name": "f"}, "input[0].arguments"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "input[0].content[0]"),
    ({"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}, "input[0].content[0].file_id"),
    ({"role": "user", "content": [{"type": "input_image", "image_url": "u", "detail": "x"}]},
     "input[0].content[0].detail"),
])
def test_bad_items_are_400s_naming_the_field(item: dict, param: str) -> None:
    with pytest.raises(OpenAIError) as raised:
        request(input=[item]).task_request("r")
    assert raised.value.status == 400 and raised.value.param == param
