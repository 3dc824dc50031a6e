"""Responses output items and their events: numbered from positions, the same however the
answer was cut into pieces, and resumable after any sequence number."""

from __future__ import annotations

import orjson
import pytest
from llm_stream_api.protocol import responses
from llm_stream_api.protocol import responses_output as outputs
from mqcommon.parts import CONTENT, LOGPROBS, REASONING, Kinds, Part, tool_key

TYPED: list[Part] = [
    (REASONING, "think"), (CONTENT, "Let me call."), (tool_key(0, "id"), "call_1"),
    (tool_key(0, "name"), "weather"), (tool_key(0, "args"), '{"city": "Oslo"}'),
    (tool_key(1, "id"), "call_2"), (tool_key(1, "name"), "time"), (tool_key(1, "args"), "{}"),
]


def events(raw: bytes) -> list[dict]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


def render(
    parts: list[Part], after: int = -1, cut: int = 0, status: str = "completed", *, held: bool = True
) -> list[dict]:
    """The events of an answer of ``parts`` after ``after``, fed in pieces of ``cut``
    characters (0: one piece per part), from a session that holds the whole answer when the
    stream opens (``held``), or nothing yet."""
    text = "".join(value for _, value in parts)
    kinds = Kinds()
    for key, value in parts:
        kinds.add(key, len(value))
    known = outputs.layout(kinds.window(0)) if held else []
    stream = outputs.OutputEvents("resp_1", after, lambda a, b: kinds.parts(text, a, b), known)
    out = b"".join(responses.opening(responses.as_created(_object(parts, status)), after))
    position = stream.start
    while position < len(text):
        stop = len(text) if not cut else min(len(text), position + cut)
        if not cut:
            stop = next(end for _, end in kinds.runs if end > position)
        out += stream.feed(kinds.parts(text, position, stop), stop)
        position = stop
    out += stream.finish(_object(parts, status), len(text))
    return events(out)


def _object(parts: list[Part], status: str) -> dict:
    text = "".join(value for _, value in parts)
    return responses.response_object("resp_1", responses.Meta("m", 1.0), status, text, parts)


def test_plain_text_is_numbered_as_it_always_was() -> None:
    whole = render([(CONTENT, "abcdef")])
    assert [e["sequence_number"] for e in whole] == [0, 1, 2, 3, 9, 10, 11, 12, 13]
    cut = render([(CONTENT, "abcdef")], cut=2)
    assert [e["sequence_number"] for e in cut] == [0, 1, 2, 3, 5, 7, 9, 10, 11, 12, 13]
    assert whole[-1]["type"] == "response.completed"
    assert whole[-1]["response"]["output"][0]["content"][0]["text"] == "abcdef"
    assert whole[-1]["response"]["output"][0]["id"] == "msg_resp_1"
    assert [e["sequence_number"] for e in render([(CONTENT, "abcdef")], after=11)] == [12, 13]


def test_an_empty_answer_still_has_one_message() -> None:
    got = render([], status="cancelled")
    assert [e["type"] for e in got][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.incomplete",
    ]
    assert got[-1]["response"]["status"] == "cancelled"


def test_typed_parts_become_items_in_order() -> None:
    got = render(TYPED)
    kinds = [e["type"] for e in got]
    assert kinds.count("response.output_item.added") == 4
    added = [e["item"]["type"] for e in got if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message", "function_call", "function_call"]
    assert "response.reasoning_text.delta" in kinds and "response.function_call_arguments.delta" in kinds
    opened = [e for e in got if e["type"] == "response.output_item.added"]
    call = next(e for e in opened if e["item"]["type"] == "function_call")
    assert call["item"]["call_id"] == "call_1" and call["item"]["name"] == "weather"
    assert call["item"]["arguments"] == ""
    final = got[-1]["response"]["output"]
    assert [item["type"] for item in final] == ["reasoning", "message", "function_call", "function_call"]
    assert final[0]["content"][0]["text"] == "think"
    assert final[2] == {"type": "function_call", "id": "fc_resp_1_2", "call_id": "call_1", "name": "weather",
                        "arguments": '{"city": "Oslo"}', "status": "completed"}
    done = [e for e in got if e["type"] == "response.output_item.done"]
    assert [e["item"] for e in done] == final
    numbers = [e["sequence_number"] for e in got]
    assert numbers == sorted(set(numbers)), "sequence numbers rise and never repeat"


@pytest.mark.parametrize("cut", [0, 1, 3, 7])
def test_the_events_do_not_depend_on_how_the_answer_was_cut(cut: int) -> None:
    whole = render(TYPED)
    pieces = render(TYPED, cut=cut)
    skeleton = [(e["type"], e["sequence_number"]) for e in pieces if not e["type"].endswith(".delta")]
    assert skeleton == [(e["type"], e["sequence_number"]) for e in whole if not e["type"].endswith(".delta")]
    for kind in ("response.reasoning_text.delta", "response.output_text.delta",
                 "response.function_call_arguments.delta"):
        assert "".join(e["delta"] for e in pieces if e["type"] == kind) == "".join(
            e["delta"] for e in whole if e["type"] == kind
        )


def test_a_resume_after_any_number_gives_exactly_the_rest() -> None:
    whole = render(TYPED, cut=1)
    last = whole[-1]["sequence_number"]
    for after in range(-1, last + 1):
        resumed = render(TYPED, after=after, cut=1)
        assert resumed == [e for e in whole if e["sequence_number"] > after], after


def test_a_resume_on_a_replica_that_holds_nothing_yet_gives_exactly_the_rest() -> None:
    whole = render(TYPED, cut=1)
    for after in range(-1, whole[-1]["sequence_number"] + 1):
        assert render(TYPED, after=after, cut=1, held=False) == [
            e for e in whole if e["sequence_number"] > after
        ], after
    # Fed in one piece, the delta the client is in the middle of is cut to what it lacks
    # (event 5 is the delta that ended at position 2).
    resumed = render([(CONTENT, "abcdef")], after=5, held=False)
    assert [e["delta"] for e in resumed if e["type"] == "response.output_text.delta"] == ["cdef"]


def test_the_sdk_accumulates_every_answer() -> None:
    from openai import omit
    from openai._models import construct_type
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    late_id = [(tool_key(0, "args"), '{"a"'), (tool_key(0, "id"), "c1"), (tool_key(0, "name"), "f"),
               (tool_key(0, "args"), ":1}")]
    with_logprobs = [(REASONING, "hm"), (LOGPROBS, "{}\n"), (REASONING, "m"), (CONTENT, "ok")]
    for parts in (TYPED, late_id, with_logprobs):
        state = ResponseStreamState(input_tools=omit, text_format=omit)
        for raw in render(parts, cut=2):
            state.handle_event(construct_type(type_=ResponseStreamEvent, value=raw))
        final = state._completed_response
        assert final is not None
        if parts is late_id:
            (call,) = final.output
            assert (call.call_id, call.name, call.arguments) == ("c1", "f", '{"a":1}')
        if parts is with_logprobs:
            assert [item.type for item in final.output] == ["reasoning", "message"]
