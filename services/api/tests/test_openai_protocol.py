"""The OpenAI dialects' wire details: chunk framing, errors (Responses events: test_responses_output)."""

from __future__ import annotations

import orjson
from llm_stream_api.dialects.openai import end_error, validation_error
from llm_stream_api.protocol.chat_completions import ChunkWriter
from llm_stream_api.protocol.openai_base import error_object


def events(raw: list[bytes]) -> list[dict]:
    out = []
    for block in b"".join(raw).split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(orjson.loads(line[6:]))
    return out


def test_chunks_end_with_usage_and_done() -> None:
    writer = ChunkWriter("s", "m", include_usage=True)
    raw = writer.role() + writer.content("hi") + writer.finish({"prompt_tokens": 2, "completion_tokens": 1})
    assert raw.endswith(b"data: [DONE]\n\n")
    chunks = [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks[:2]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "hi"}]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 3


def test_errors_name_their_parameter() -> None:
    error = validation_error([{"loc": ("body", "messages", 0, "role"), "msg": "Field required"}])
    assert error.status == 400 and error.param == "messages[0].role"
    assert error_object(error)["error"]["type"] == "invalid_request_error"
    assert end_error("error", "LLM unavailable: boom").status == 502
    assert end_error("error", "LLM error: unknown model").status == 400


def test_finish_reason_is_length_when_every_allowed_token_was_used() -> None:
    writer = ChunkWriter("s", "m", include_usage=False, max_tokens=3)
    cut = writer.finish({"completion_tokens": 3})
    assert b'"finish_reason":"length"' in cut
    uncapped = ChunkWriter("s", "m", include_usage=False)
    assert b'"finish_reason":"stop"' in uncapped.finish({"completion_tokens": 3})
    assert b'"finish_reason":"stop"' in writer.finish({"completion_tokens": 2})


def test_typed_parts_become_openai_deltas_and_a_message() -> None:
    import orjson
    from llm_stream_api.protocol.chat_completions import ChunkWriter, completion

    parts = [("reasoning", "hmm"), ("tool.0.id", "c1"), ("tool.0.name", "f"), ("tool.0.args", '{"a"'),
             ("tool.0.args", ":1}"), ("tool.1.id", "c2"), ("tool.1.name", "g"), ("tool.1.args", "{}")]
    writer = ChunkWriter("s", "m", include_usage=False)
    events = [orjson.loads(line[6:]) for line in writer.parts(parts).decode().split("\n\n") if line]
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0] == {"reasoning_content": "hmm"}
    assert deltas[1] == {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                         "function": {"name": "f", "arguments": '{"a":1}'}}]}
    assert deltas[2]["tool_calls"][0]["index"] == 1
    assert b'"finish_reason":"tool_calls"' in writer.finish(None)
    body = completion("s", "m", 0, "", None, parts=parts)
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "hmm"
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == ['{"a":1}', "{}"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_several_choices_open_in_order_whatever_comes_first() -> None:
    from llm_stream_api.protocol.chat_completions import completion
    from mqcommon.parts import CONTENT, FINISH, choice_key
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    parts = [(choice_key(2, CONTENT), "two"), (CONTENT, "zero"), (choice_key(1, CONTENT), "one"),
             (choice_key(2, FINISH), "length"), (choice_key(7, CONTENT), "nobody asked")]
    writer = ChunkWriter("s", "m", include_usage=False, choices=3)
    raw = writer.role() + writer.parts(parts) + writer.finish(None, "stop")
    assert b'"index":2,"delta":{},"logprobs":null,"finish_reason":"length"' in raw
    raw = raw.replace(b'"finish_reason":"length"', b'"finish_reason":"stop"')  # the SDK refuses length
    state = ChatCompletionStreamState()
    for line in raw.split(b"\n\n"):
        if line.startswith(b"data: {"):
            state.handle_chunk(ChatCompletionChunk.model_validate(orjson.loads(line[6:])))
    final = state.get_final_completion()
    assert [(c.index, c.message.content) for c in final.choices] == [(0, "zero"), (1, "one"), (2, "two")]
    whole = completion("s", "m", 0, "", None, parts=parts, finish="stop", choices=3)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in whole["choices"]] == [
        (0, "zero", "stop"), (1, "one", "stop"), (2, "two", "length"),
    ]
