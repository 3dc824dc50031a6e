"""Typed parts on one line of positions: runs, their wire form, and merging by position."""

from __future__ import annotations

import pytest
from mqcommon.parts import CONTENT, Kinds, runs_from_wire, runs_to_wire, tool_of
from mqcommon.schemas import End, Frame, HistoryRecord, MalformedMessage, decode_frames, encode_frames


def test_runs_coalesce_and_cut_any_window() -> None:
    kinds = Kinds()
    for key, count in (("reasoning", 3), ("reasoning", 2), (CONTENT, 4), ("tool.0.args", 6)):
        kinds.add(key, count)
    assert kinds.runs == [["reasoning", 5], [CONTENT, 9], ["tool.0.args", 15]]
    assert kinds.window(4, 10) == [("reasoning", 1), (CONTENT, 4), ("tool.0.args", 1)]
    assert kinds.parts("rrrrrccccTTTTTT", 7) == [(CONTENT, "cc"), ("tool.0.args", "TTTTTT")]


def test_agreement_is_checked_only_where_both_hold_text() -> None:
    kinds = Kinds([["reasoning", 5], [CONTENT, 9]])
    assert kinds.agrees(3, [("reasoning", 2), (CONTENT, 10)])
    assert not kinds.agrees(3, [(CONTENT, 12)])
    assert kinds.agrees(9, [("tool.0.id", 4)])  # all beyond what is held
    grown = Kinds([["reasoning", 5], [CONTENT, 9]])
    grown.extend([(CONTENT, 6), ("tool.0.id", 4)], skip=4)
    assert grown.runs == [["reasoning", 5], [CONTENT, 11], ["tool.0.id", 15]]


def test_plain_text_travels_without_kinds_and_kinds_must_cover_the_text() -> None:
    assert runs_to_wire([(CONTENT, 4)]) is None
    assert runs_from_wire(None, 4) == [(CONTENT, 4)]
    assert runs_from_wire([["reasoning", 2], [CONTENT, 2]], 4) == [("reasoning", 2), (CONTENT, 2)]
    assert runs_from_wire([["reasoning", 2]], 4) is None
    assert runs_from_wire([["", 4]], 4) is None
    assert tool_of("tool.12.args") == (12, "args")
    assert tool_of("tool.x.args") is None and tool_of(CONTENT) is None


def test_frames_and_transcripts_round_trip_their_kinds() -> None:
    frame = Frame("s", 3, "abcdef", kinds=[("reasoning", 2), ("tool.0.args", 4)],
                  end=End("done", 9, finish="tool_calls"))
    wire = encode_frames("w", [frame.to_wire(), Frame("t", 0, "plain").to_wire()])
    assert b'"kinds"' in wire and wire.count(b'"kinds"') == 1
    (back, plain), skipped = decode_frames(wire)
    assert skipped == 0 and back.kinds == [("reasoning", 2), ("tool.0.args", 4)]
    assert back.end is not None and back.end.finish == "tool_calls"
    assert plain.kinds is None
    record = HistoryRecord("transcript", "s", text="abcd", end=End("done", 4),
                           kinds=[("reasoning", 1), (CONTENT, 3)])
    assert HistoryRecord.decode(record.encode()).kinds == [("reasoning", 1), (CONTENT, 3)]


def test_kinds_that_do_not_cover_the_text_are_malformed() -> None:
    wire = encode_frames("w", [{"sid": "s", "off": 0, "text": "abc", "kinds": [["reasoning", 2]]}])
    frames, skipped = decode_frames(wire)
    assert frames == [] and skipped == 1
    with pytest.raises(MalformedMessage):
        HistoryRecord.decode(b'{"v": 3, "kind": "transcript", "sid": "s", "text": "ab", '
                             b'"kinds": [["reasoning", 5]], "end": {"kind": "done", "length": 2}}')


def test_history_of_the_previous_version_is_still_read() -> None:
    record = HistoryRecord.decode(b'{"v": 2, "kind": "transcript", "sid": "s", "text": "ab", '
                                  b'"end": {"kind": "done", "length": 2}}')
    assert record.text == "ab" and record.kinds is None
