"""The host cluster (``support/rabbitmq_cluster.py``): three RabbitMQ nodes behind HAProxy.

Replicated queues reach every node, a quorum queue whose leader is SIGKILLed takes confirmed
publishes again through the balanced address once a new leader is elected, and the killed
node rejoins. The cluster is this module's own, never the run's broker. Timings are printed
(``-s``), not asserted: a busy machine is slower, not wrong.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aio_pika
import aiormq
import pytest
from support.rabbitmq_cluster import HostCluster, host_cluster, queue_info

pytestmark = pytest.mark.integration

FAILOVER_BOUND_S = 60.0
ATTEMPT_TIMEOUT_S = 5.0
QUORUM = {"x-queue-type": "quorum", "x-quorum-initial-group-size": 3, "x-queue-leader-locator": "balanced"}
STREAM = {"x-queue-type": "stream", "x-initial-cluster-size": 3}


@pytest.fixture(scope="module")
def cluster() -> Iterator[HostCluster]:
    with host_cluster() as started:
        print(f"\nRabbitMQ {started.version} cluster of 3 started in {started.started_in_s:.1f} s")
        yield started


def _name(kind: str) -> str:
    return f"cluster-{kind}-{uuid.uuid4().hex[:8]}"


async def _declare(url: str, name: str, arguments: dict[str, Any]) -> None:
    async with await aio_pika.connect(url, timeout=ATTEMPT_TIMEOUT_S) as connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments=arguments)


async def _delete(url: str, *names: str) -> None:
    async with await aio_pika.connect(url, timeout=ATTEMPT_TIMEOUT_S) as connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


async def _publish(url: str, queue: str, body: bytes) -> None:
    """One persistent message, confirmed, on a new connection (a client reconnecting)."""
    connection = await aio_pika.connect(url, timeout=ATTEMPT_TIMEOUT_S)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(
            message, routing_key=queue, mandatory=True, timeout=ATTEMPT_TIMEOUT_S
        )


T = TypeVar("T")


async def _wait_for(check: Callable[[], T | bool | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while (got := await asyncio.to_thread(check)) is None or got is False:
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.5)
    return got  # type: ignore[return-value]


async def test_replicas_on_every_node(cluster: HostCluster) -> None:
    quorum, stream = _name("qq"), _name("stream")
    await _declare(cluster.balanced_url, quorum, QUORUM)
    await _declare(cluster.balanced_url, stream, STREAM)
    try:
        names = sorted(node.name for node in cluster.nodes)
        assert sorted(await asyncio.to_thread(cluster.members_of, quorum)) == names
        assert sorted(await asyncio.to_thread(cluster.members_of, stream)) == names
        assert await asyncio.to_thread(cluster.leader_of, quorum) in cluster.nodes
        # Redeclared with the same arguments, through whichever node the balancer picks.
        await _declare(cluster.balanced_url, quorum, QUORUM)
        await _declare(cluster.balanced_url, stream, STREAM)
    finally:
        await _delete(cluster.balanced_url, quorum, stream)


@pytest.mark.parametrize(
    ("declared", "added"),
    [
        (
            {"x-queue-type": "quorum"},
            {"x-quorum-initial-group-size": 3, "x-queue-leader-locator": "balanced"},
        ),
        ({"x-queue-type": "stream"}, {"x-initial-cluster-size": 3}),
        ({"x-queue-type": "stream"}, {"x-queue-leader-locator": "balanced"}),
    ],
    ids=["quorum", "stream-size", "stream-locator"],
)
async def test_placement_arguments_added_to_an_existing_queue_are_refused(
    cluster: HostCluster, declared: dict[str, Any], added: dict[str, Any]
) -> None:
    """On 3.10 the placement arguments take part in the equivalence check: a queue declared
    without them cannot be redeclared with them (PRECONDITION_FAILED, the channel closes)."""
    name = _name("equivalence")
    await _declare(cluster.balanced_url, name, declared)
    try:
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="inequivalent arg"):
            await _declare(cluster.balanced_url, name, {**declared, **added})
    finally:
        await _delete(cluster.balanced_url, name)


async def test_connection_name_finds_its_node(cluster: HostCluster) -> None:
    name = _name("connection")
    async with await aio_pika.connect(f"{cluster.balanced_url}?name={name}", timeout=5):
        node = await _wait_for(lambda: cluster.node_of_connection(name), 30, "the named connection")
    assert node in cluster.nodes


async def test_quorum_queue_fails_over_when_its_leader_is_killed(cluster: HostCluster) -> None:
    queue = _name("failover")
    await _declare(cluster.balanced_url, queue, QUORUM)
    await _publish(cluster.balanced_url, queue, b"before")
    leader = await asyncio.to_thread(cluster.leader_of, queue)
    assert leader is not None

    await asyncio.to_thread(cluster.kill, leader)
    killed_at = time.monotonic()
    attempts, last_error = 0, None
    while time.monotonic() - killed_at < FAILOVER_BOUND_S:
        attempts += 1
        try:
            await _publish(cluster.balanced_url, queue, b"after")
            break
        except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
            last_error = exc
            await asyncio.sleep(0.2)
    else:
        pytest.fail(f"no confirmed publish within {FAILOVER_BOUND_S:g} s of the kill: {last_error!r}")
    confirmed_in = time.monotonic() - killed_at
    new_leader = await _wait_for(
        lambda: (found := cluster.leader_of(queue)) not in (None, leader) and found,
        30,
        "a new leader in the management API",
    )
    print(
        f"\nleader {leader.name} SIGKILLed: a publish through the balancer was confirmed after "
        f"{confirmed_in:.1f} s ({attempts} attempts); new leader {new_leader.name}"
    )

    began = time.monotonic()
    await asyncio.to_thread(cluster.start, leader)
    assert leader.name in await asyncio.to_thread(cluster.running)
    await _wait_for(
        lambda: leader.name in ((queue_info(cluster.management_url(), queue) or {}).get("online") or []),
        60,
        "the restarted node online as a member of the queue",
    )
    print(f"{leader.name} started again and back in the queue's members in {time.monotonic() - began:.1f} s")

    async with await aio_pika.connect(cluster.balanced_url, timeout=ATTEMPT_TIMEOUT_S) as connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count == 2
        await channel.queue_delete(queue)
