from __future__ import annotations

import pytest
from mqcommon.connection import connection_url
from mqcommon.schemas import ChatTask, EventBatch, StreamEvent
from mqcommon.settings import BrokerSettings
from mqcommon.topology import Topology
from mqcommon.tracing import child_of, new_traceparent, trace_id_of
from pydantic import ValidationError


def test_task_round_trips_and_refuses_bad_payloads() -> None:
    task = ChatTask(session_id="abc-1", message="hi")
    assert ChatTask.decode(task.encode()) == task
    for bad in (b"{}", b'{"session_id": "a", "message": ""}', b'{"session_id": "a b", "message": "x"}',
                b'{"v": 2, "session_id": "a", "message": "x"}', b"not json"):
        with pytest.raises(ValidationError):
            ChatTask.decode(bad)


def test_event_batch_round_trips() -> None:
    batch = EventBatch(producer="p", events=[StreamEvent(session_id="s", kind="chunk", text="é→🙂")])
    assert EventBatch.decode(batch.encode()) == batch


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


def test_connection_url_names_the_connection_and_keeps_options() -> None:
    url = connection_url("amqp://g:g@h:5672/?heartbeat=10", "api@x")
    assert "name=api%40x" in url and "heartbeat=10" in url


def test_traceparent_is_continued_or_created() -> None:
    parent = new_traceparent()
    trace = trace_id_of(parent)
    assert trace and len(trace) == 32
    assert trace_id_of(child_of(parent)) == trace
    assert trace_id_of(child_of("garbage")) not in (None, trace)
