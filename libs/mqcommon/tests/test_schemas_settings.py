from __future__ import annotations

import pytest
from mqcommon.connection import connection_url
from mqcommon.schemas import (
    ChatTask,
    End,
    Frame,
    HistoryRecord,
    MalformedMessage,
    Presence,
    decode_frames,
    encode_frames,
    id_time,
    new_id,
)
from mqcommon.settings import BrokerSettings
from mqcommon.topology import Topology
from mqcommon.tracing import child_of, new_traceparent, trace_id_of
from pydantic import ValidationError


def test_task_round_trips_and_refuses_bad_payloads() -> None:
    task = ChatTask(session_id="abc-1", message="hi")
    assert ChatTask.decode(task.encode()) == task
    for bad in (b"{}", b'{"session_id": "a", "message": ""}', b'{"session_id": "a b", "message": "x"}',
                b'{"v": 3, "session_id": "a", "message": "x"}', b"not json"):
        with pytest.raises(ValidationError):
            ChatTask.decode(bad)


def test_frames_round_trip_and_bad_ones_are_skipped_one_by_one() -> None:
    frames = [
        Frame("s", 0, "é→🙂", started=True, trace_id="t").to_wire(),
        Frame("s2", 3, "x", end=End("error", 4, "boom"), attempt=2).to_wire(),
        {"sid": 5, "off": 0, "text": "wrong type"},
        {"sid": "s3", "off": -1, "text": "negative"},
        {"sid": "s4", "off": 0, "text": "", "end": {"kind": "exploded", "length": 0}},
    ]
    decoded, skipped = decode_frames(encode_frames("p", frames))
    assert skipped == 3
    assert decoded == [
        Frame("s", 0, "é→🙂", started=True, trace_id="t"),
        Frame("s2", 3, "x", end=End("error", 4, "boom"), attempt=2),
    ]


@pytest.mark.parametrize(("body", "reason"), [
    (b"not json", "malformed"),
    (b"[1, 2]", "malformed"),
    (b'{"v": 1, "producer": "old", "events": []}', "version"),
    (b'{"v": 3, "frames": "nope"}', "malformed"),
])
def test_unusable_live_messages_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_frames(body)
    assert caught.value.reason == reason


def test_history_records_round_trip_with_their_filter_value() -> None:
    record = HistoryRecord("transcript", "s", at=1.5, text="all", end=End("done", 3), trace_id="t")
    assert HistoryRecord.decode(record.encode()) == record
    assert record.headers() == {"x-stream-filter-value": "s", "session_id": "s"}
    with pytest.raises(MalformedMessage):
        HistoryRecord.decode(b'{"v": 2, "kind": "transcript", "sid": "s"}')
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": []}]
    stored = HistoryRecord("stored", "resp_1", at=2.0, owner="k1", conversation=turns)
    assert HistoryRecord.decode(stored.encode()) == stored
    with pytest.raises(MalformedMessage):
        HistoryRecord.decode(b'{"v": 3, "kind": "stored", "sid": "s", "conversation": "q"}')


def test_presence_reads_both_formats() -> None:
    presence = Presence("r1", ["a"], ["a", "b"], ["c"])
    assert Presence.decode(presence.encode()) == presence
    old = Presence.decode(b'{"sessions": ["a", 5]}')
    assert old.replica is None and old.served == ["a"]


def test_broker_url_accepts_the_alias_and_refuses_other_schemes(monkeypatch) -> None:
    monkeypatch.delenv("RABBIT_MQ", raising=False)
    monkeypatch.setenv("RABBITMQ_URL", "amqp://u:p@h:5672/v")
    assert BrokerSettings().rabbit_mq == "amqp://u:p@h:5672/v"
    monkeypatch.setenv("RABBIT_MQ", "http://nope")
    with pytest.raises(ValidationError):
        BrokerSettings()


def test_topology_uses_real_amqp_arguments() -> None:
    topo = Topology.from_settings(BrokerSettings(task_queue="t", dead_letter_exchange="dlx"))
    assert topo.task_queue.name == "t"
    assert topo.task_queue.arguments["x-queue-type"] == "quorum"
    assert topo.task_queue.arguments["x-dead-letter-exchange"] == "dlx"
    assert topo.events_stream.arguments["x-queue-type"] == "stream"
    assert topo.events_stream.arguments["x-stream-filter-size-bytes"] == 255
    assert topo.live_exchange.type.value == "direct"


def test_connection_url_names_the_connection_and_keeps_options() -> None:
    url = connection_url("amqp://g:g@h:5672/?heartbeat=10", "api@x")
    assert "name=api%40x" in url and "heartbeat=10" in url


def test_traceparent_is_continued_or_created() -> None:
    parent = new_traceparent()
    trace = trace_id_of(parent)
    assert trace and len(trace) == 32
    assert trace_id_of(child_of(parent)) == trace
    assert trace_id_of(child_of("garbage")) not in (None, trace)


def test_ids_are_uuid7_and_say_when_they_were_made() -> None:
    import time
    import uuid

    made = new_id()
    assert len(made) == 32 and uuid.UUID(made).version == 7
    assert abs(id_time(made) - time.time()) < 5
    assert id_time(f"resp_{made}") == id_time(made)
    assert new_id() != made
    for foreign in (uuid.uuid4().hex, "chosen-by-a-client", "", "z" * 32):
        assert id_time(foreign) is None


def test_a_queue_event_carries_its_owner_in_its_headers_only_when_there_is_one() -> None:
    from mqcommon.schemas import QUEUED, QueueEvent

    keyed = QueueEvent(QUEUED, "s-1", at=12.5, owner="alice")
    assert QueueEvent.from_headers(keyed.headers()) == keyed
    open_ = QueueEvent(QUEUED, "s-2", at=1.0)
    assert "owner" not in open_.headers()
    assert QueueEvent.from_headers({**open_.headers(), "owner": 7}) == open_  # not a key id
