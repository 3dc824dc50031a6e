"""Settings and topology for a cluster: node lists, replication given at creation, rotation."""

from __future__ import annotations

import asyncio
import time

import pytest
from mqcommon.connection import NodeListConnection, _answers_within, node_urls, redacted
from mqcommon.settings import BrokerSettings
from mqcommon.topology import Topology
from pydantic import ValidationError


def test_rabbit_mq_is_one_url_or_a_list_of_node_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBIT_MQ", "amqp://u:p@a:5672/, amqp://u:p@b:5672/,amqps://u:p@c:5671/")
    urls = BrokerSettings().rabbit_mq
    assert node_urls(urls) == ["amqp://u:p@a:5672/", "amqp://u:p@b:5672/", "amqps://u:p@c:5671/"]
    assert redacted(urls) == "a:5672/,b:5672/,c:5671/"  # no credentials in a log line
    monkeypatch.setenv("RABBIT_MQ", "amqp://u:p@a:5672/,http://b")
    with pytest.raises(ValidationError, match="separated by commas"):
        BrokerSettings()


def test_queues_and_streams_are_created_replicated_with_spread_leaders() -> None:
    topo = Topology.from_settings(BrokerSettings(queue_replicas=5, stream_replicas=3))
    for quorum in (topo.task_queue, topo.dead_letter_queue, topo.dead_letter_notices):
        assert quorum.replication == {"x-quorum-initial-group-size": 5, "x-queue-leader-locator": "balanced"}
    for stream in (topo.events_stream, topo.cancels_stream, topo.queue_log_stream, topo.watermarks_stream):
        assert stream.replication == {"x-initial-cluster-size": 3, "x-queue-leader-locator": "balanced"}
    declared = topo.task_queue.declared_as()
    assert declared is not None and declared["x-quorum-initial-group-size"] == 5
    assert declared["x-delivery-limit"] == 3  # the queue's own arguments stay


def test_replication_settings_refuse_nonsense() -> None:
    with pytest.raises(ValidationError):
        BrokerSettings(queue_replicas=0)
    with pytest.raises(ValidationError):
        BrokerSettings(queue_leader_locator="random")


async def test_a_node_list_connection_moves_to_the_next_node_and_wraps() -> None:
    urls = ["amqp://g:g@a:1/", "amqp://g:g@b:2/", "amqp://g:g@c:3/"]
    connection = NodeListConnection(urls, 1)
    assert connection.url.host == "b"
    connection.next_node()
    assert connection.url.host == "c"
    connection.next_node()
    assert connection.url.host == "a"
    connection.url = "amqp://g:new@a:1/"  # aio-pika sets it on a new secret: this node's only
    assert connection.url.password == "new"
    connection.next_node()
    assert connection.url.host == "b" and connection.url.password == "g"
    await connection.close()  # never connected: nothing to close but the object


async def test_a_stall_is_the_node_silent_while_this_process_listens() -> None:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()
    loop.call_soon(answered.set_result, None)
    assert await _answers_within(answered, 0.6)
    assert not await _answers_within(loop.create_future(), 0.6)  # never answered: a stall
    # The process itself stops listening for a second (a busy loop); the answer, due meanwhile,
    # is read as soon as it listens again: the node did not stall.
    late: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.05, time.sleep, 1.0)
    loop.call_later(0.1, late.set_result, None)
    assert await _answers_within(late, 0.6)
    # Unanswered, but the node keeps sending (deliveries ahead of the answer): busy, not hung.
    busy: asyncio.Future[None] = loop.create_future()
    loop.call_later(1.0, busy.set_result, None)
    assert await _answers_within(busy, 0.6, silent_for=lambda: 0.0)
    failing: asyncio.Future[None] = loop.create_future()
    failing.set_exception(ConnectionError("closed"))
    with pytest.raises(ConnectionError):
        await _answers_within(failing, 0.6)


def test_a_sharded_line_has_one_queue_per_shard_bounded_by_its_share() -> None:
    topo = Topology.from_settings(BrokerSettings(task_queue="t", task_shards=3, max_queued_tasks=100))
    assert [spec.name for spec in topo.task_queues] == ["t", "t.s1", "t.s2"]
    assert {spec.arguments["x-max-length"] for spec in topo.task_queues} == {34}
    assert all(spec.replication == topo.task_queue.replication for spec in topo.shards)
    assert topo.shard_exchange is not None and topo.shard_exchange.name == "t.shards"
    keys = {topo.shard_key(f"session-{i}") for i in range(300)}
    assert keys == {"s0", "s1", "s2"}  # every shard is used
    assert topo.shard_key("abc") == topo.shard_key("abc")  # the same on every replica
    single = Topology.from_settings(BrokerSettings(task_queue="t"))
    assert single.shards == () and single.shard_exchange is None
    assert single.task_queue.arguments["x-max-length"] == 10_000  # today's queue, unchanged


def test_pool_names_that_would_be_a_shard_are_refused() -> None:
    from mqcommon.pools import PoolsError, parse

    with pytest.raises(PoolsError, match="reserved"):
        parse('[{"name": "s2", "models": ["m"]}]')
