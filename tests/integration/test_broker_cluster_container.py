"""The three-node RabbitMQ 4.0 cluster in podman containers (``support.rabbitmq_container_cluster``):
it forms at boot, replicates a quorum queue and a stream on all three nodes, elects a new
leader when the leader is SIGKILLed (a confirmed publish through the balancer succeeds again),
takes the killed node back, and under a network partition the cut-off node pauses
(pause_minority) while the other two go on serving.

One cluster for the module; the tests run in order and leave it whole. Failed, with the
reason, where podman cannot run containers (``make test`` runs ``scripts/containers.sh install``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import aio_pika
import httpx
import pytest
from support.rabbitmq_container_cluster import ContainerCluster, container_cluster, podman_usable
from support.rabbitmq_node import NodeError

pytestmark = pytest.mark.integration

PUBLISH_TIMEOUT_S = 5.0
FAILOVER_TIMEOUT_S = 60.0
REPLICAS = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[ContainerCluster]:
    reason = podman_usable()
    if reason:  # `make test` installs podman: without it the run is broken, not done
        pytest.fail(f"the RabbitMQ container cluster needs podman: {reason}", pytrace=False)
    with container_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def queues(cluster: ContainerCluster) -> tuple[str, str]:
    """A quorum queue and a stream on all three nodes, declared through the balancer."""
    quorum, stream = f"test.cluster.{uuid.uuid4().hex[:8]}.qq", f"test.cluster.{uuid.uuid4().hex[:8]}.stream"

    async def declare() -> None:
        connection = await aio_pika.connect(cluster.balanced_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(
                quorum,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": REPLICAS},
            )
            await channel.declare_queue(
                stream,
                durable=True,
                arguments={"x-queue-type": "stream", "x-initial-cluster-size": REPLICAS},
            )

    asyncio.run(asyncio.wait_for(declare(), 30))
    return quorum, stream


async def _publish_once(url: str, queue: str, body: bytes) -> None:
    """One persistent message, confirmed by the broker (a fresh connection each time: the one
    before may sit on the node that went away)."""
    connection = await aio_pika.connect(url, timeout=PUBLISH_TIMEOUT_S)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(
            message, routing_key=queue, mandatory=True, timeout=PUBLISH_TIMEOUT_S
        )


def confirmed_publish_after(url: str, queue: str, began: float) -> float:
    """Seconds from ``began`` until a confirmed publish to ``queue`` through ``url`` succeeds."""

    async def until_confirmed() -> float:
        while True:
            try:
                await asyncio.wait_for(_publish_once(url, queue, b"after the fault"), PUBLISH_TIMEOUT_S * 2)
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            return time.monotonic() - began

    return asyncio.run(asyncio.wait_for(until_confirmed(), FAILOVER_TIMEOUT_S))


def publish_once(url: str, queue: str) -> None:
    asyncio.run(asyncio.wait_for(_publish_once(url, queue, b"between faults"), 30))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check``; a management API that does not answer yet counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, NodeError):
            if check():
                return
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        time.sleep(0.3)


def test_three_nodes_form_one_cluster_and_replicate_on_all(
    cluster: ContainerCluster, queues: tuple[str, str], record_property: Callable[[str, object], None]
) -> None:
    record_property("cluster_started_in_s", round(cluster.started_in_s or 0, 1))
    print(f"\n{cluster.description}: started in {cluster.started_in_s:.1f} s")
    assert cluster.version.startswith("4.")
    assert cluster.running() == {node.name for node in cluster.nodes}
    quorum, stream = queues
    assert sorted(cluster.members_of(quorum)) == sorted(node.name for node in cluster.nodes)
    wait_for(lambda: len(cluster.members_of(stream)) == REPLICAS, f"{stream} on {REPLICAS} nodes")
    assert cluster.leader_of(quorum) is not None
    assert cluster.leader_of(stream) is not None
    publish_once(cluster.balanced_url, quorum)


def test_a_killed_leader_is_replaced_and_its_node_rejoins(
    cluster: ContainerCluster, queues: tuple[str, str], record_property: Callable[[str, object], None]
) -> None:
    quorum, _ = queues
    leader = cluster.leader_of(quorum)
    assert leader is not None
    began = time.monotonic()
    cluster.kill(leader)
    publish_s = confirmed_publish_after(cluster.balanced_url, quorum, began)
    wait_for(
        lambda: (new := cluster.leader_of(quorum)) is not None and new != leader, f"a new leader of {quorum}"
    )
    record_property("publish_after_leader_kill_s", round(publish_s, 2))
    print(f"\nleader {leader.name} SIGKILLed: confirmed publish through the balancer after {publish_s:.2f} s")
    assert leader.name not in cluster.running()

    began = time.monotonic()
    cluster.start(leader)
    rejoined_s = time.monotonic() - began
    record_property("killed_node_back_in_s", round(rejoined_s, 1))
    print(f"{leader.name} started again: back in the cluster after {rejoined_s:.1f} s")
    assert cluster.running() == {node.name for node in cluster.nodes}
    wait_for(lambda: leader.name in cluster.online_of(quorum), f"{leader.name}'s replica of {quorum} online")


def test_a_partitioned_node_pauses_and_the_majority_serves(
    cluster: ContainerCluster, queues: tuple[str, str], record_property: Callable[[str, object], None]
) -> None:
    quorum, _ = queues
    cut = cluster.leader_of(quorum)
    assert cut is not None
    others = {node.name for node in cluster.nodes} - {cut.name}
    began = time.monotonic()
    cluster.partition(cut)
    try:
        with ThreadPoolExecutor(1) as pool:
            pausing = pool.submit(cluster.wait_paused, cut)
            publish_s = confirmed_publish_after(cluster.balanced_url, quorum, began)
            paused_s = pausing.result()  # from the disconnect, give or take a podman call
        wait_for(lambda: cluster.running() == others, f"the majority {sorted(others)} without {cut.name}")
        assert not cluster.app_running(cut)
        new_leader = cluster.leader_of(quorum)
        assert new_leader is not None and new_leader.name in others
        publish_once(cluster.balanced_url, quorum)
    finally:
        healed = time.monotonic()
        cluster.heal(cut)
    healed_s = time.monotonic() - healed
    record_property("publish_after_partition_s", round(publish_s, 2))
    record_property("partitioned_node_paused_after_s", round(paused_s, 1))
    record_property("healed_node_back_in_s", round(healed_s, 1))
    print(
        f"\n{cut.name} (leader) cut off: confirmed publish through the balancer after {publish_s:.2f} s, "
        f"the node paused itself after {paused_s:.1f} s; healed, back after {healed_s:.1f} s"
    )
    assert cluster.running() == {node.name for node in cluster.nodes}
    assert cluster.app_running(cut)
