"""Tasks carry a conversation and generation parameters; the LLM request is built from them."""

from __future__ import annotations

import pytest
from mqcommon.llm import build_messages, request_arguments
from mqcommon.schemas import ChatMessage, ChatTask, End, Frame, HistoryRecord, decode_frames, encode_frames
from mqcommon.settings import LLMSettings
from pydantic import ValidationError


def test_an_old_task_still_decodes_as_one_user_message() -> None:
    old = b'{"v": 1, "task_id": "t", "session_id": "s", "message": "hi", "model": null, "created_at": 1.0}'
    task = ChatTask.decode(old)
    assert task.conversation() == [{"role": "user", "content": "hi"}]
    assert task.temperature is None and task.include_usage is None


def test_a_conversation_round_trips_and_leaves_unset_fields_out() -> None:
    task = ChatTask(
        session_id="s",
        messages=(ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="q")),
        temperature=0.5, max_tokens=10, stop=("x",), include_usage=True,
    )
    assert ChatTask.decode(task.encode()) == task
    assert b"top_p" not in task.encode() and b"message\"" not in task.encode()
    assert task.conversation()[0] == {"role": "system", "content": "be brief"}


def test_a_task_needs_something_to_answer() -> None:
    with pytest.raises(ValidationError):
        ChatTask(session_id="s")
    with pytest.raises(ValidationError):
        ChatTask.decode(b'{"session_id": "s", "messages": [{"role": "robot", "content": "x"}]}')


def test_usage_travels_in_the_end_of_frames_and_transcripts() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    body = encode_frames("w", [Frame("s", 0, "abc", end=End("done", 3, usage=usage)).to_wire()])
    frames, skipped = decode_frames(body)
    assert skipped == 0 and frames[0].end.usage == usage
    transcript = HistoryRecord("transcript", "s", text="abc", end=End("done", 3, usage=usage))
    record = HistoryRecord.decode(transcript.encode())
    assert record.end.usage == usage
    assert End("done", 3).to_wire() == {"kind": "done", "length": 3}


def test_the_system_prompt_applies_only_when_the_conversation_has_none() -> None:
    settings = LLMSettings(system_prompt="house rules")
    assert build_messages(settings, "hi") == [
        {"role": "system", "content": "house rules"}, {"role": "user", "content": "hi"}
    ]
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    assert build_messages(settings, None, own) == own
    assert build_messages(settings, None, [{"role": "user", "content": "hi"}])[0]["content"] == "house rules"


def test_parameters_are_passed_and_max_tokens_is_capped() -> None:
    params = {
        "temperature": 0.3, "top_p": None, "max_tokens": 500, "stop": ("a", "b"), "seed": 1, "user": "u"
    }
    assert request_arguments(LLMSettings(llm_max_tokens=100), params, usage=True) == {
        "temperature": 0.3, "stop": ["a", "b"], "seed": 1, "user": "u", "max_tokens": 100,
        "stream_options": {"include_usage": True},
    }
    assert request_arguments(LLMSettings(), {"max_tokens": 7}, usage=False) == {"max_tokens": 7}
    assert request_arguments(LLMSettings(llm_max_tokens=50), None, usage=False) == {"max_tokens": 50}


def test_a_chunk_becomes_its_typed_parts() -> None:
    from mqcommon.llm import Outcome, _delta_parts, _ToolCalls

    calls, outcome = _ToolCalls(), Outcome()
    plain = {"choices": [{"delta": {"content": "hi"}}]}
    assert _delta_parts(plain, calls, outcome) == [("content", "hi")]
    first = {"choices": [{"delta": {"tool_calls": [
        {"index": 1, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}
    assert _delta_parts(first, calls, outcome) == [("tool.1.id", "c1"), ("tool.1.name", "f")]
    again = {"choices": [{"delta": {"tool_calls": [
                                {"index": 1, "id": "c1", "function": {"arguments": "{}"}}]},
                          "finish_reason": "tool_calls"}]}
    assert _delta_parts(again, calls, outcome) == [("tool.1.args", "{}")]  # a repeated id is sent once
    assert outcome.finish == "tool_calls"
    rich = {"choices": [{"delta": {"reasoning_content": "r", "content": "c"},
                         "logprobs": {"content": [{"token": "c", "logprob": -0.1}]}}]}
    assert _delta_parts(rich, calls, outcome) == [
        ("reasoning", "r"), ("content", "c"), ("logprobs", '{"token":"c","logprob":-0.1}\n')]
