"""What the broker makes of llm-stream's topology, on whichever broker the run uses (3.x or 4.x).

RabbitMQ 4 changed defaults that matter here: quorum queues get a delivery limit of 20 unless
one is set, and transient non-exclusive queues (among others) are deprecated. The topology must
set its own limit, and use no deprecated feature while the system runs.

Replication is given when a queue is created; queues an earlier release created without it
keep working (the broker refuses a redeclaration with arguments they were not created with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from urllib.parse import quote

import aio_pika
import httpx
import pytest
from mqcommon.settings import BrokerSettings
from mqcommon.topology import Topology, declare_queue
from support.brokers import Broker

from .support.deployment import Deployment, prompt

pytestmark = [pytest.mark.integration, pytest.mark.broker]

MAX_DELIVERIES = 2


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(TASK_MAX_DELIVERIES=str(MAX_DELIVERIES))
    module_deployment.worker(TASK_MAX_DELIVERIES=str(MAX_DELIVERIES))
    return module_deployment.start()


async def answer_one(client: httpx.AsyncClient, stack: Deployment) -> None:
    ask = prompt("compat")
    response = await client.post(f"{stack.apis[0].base_url}/chat", json={"message": ask.text})
    assert response.status_code == 200 and response.text == ask.expected, response.text


async def test_queues_have_the_types_and_limits_the_topology_sets(
    stack: Deployment, broker: Broker, client: httpx.AsyncClient
) -> None:
    await answer_one(client, stack)
    names = stack.names
    async with broker.management(timeout=10) as api:

        async def queue(name: str) -> dict:
            response = await api.get(f"/api/queues/%2F/{quote(name, safe='')}")
            assert response.status_code == 200, response.text
            return response.json()

        tasks = await queue(names.task_queue)
        assert tasks["type"] == "quorum"
        assert tasks["durable"] is True
        # Explicit, so RabbitMQ 4's default limit of 20 never applies.
        assert tasks["arguments"]["x-delivery-limit"] == MAX_DELIVERIES
        assert tasks["arguments"]["x-dead-letter-exchange"] == names.dead_letter_exchange
        # Created replicated, leaders spread (capped by the broker at the cluster's size).
        assert tasks["arguments"]["x-quorum-initial-group-size"] == 3
        assert tasks["arguments"]["x-queue-leader-locator"] == "balanced"
        events = await queue(names.events_stream)
        assert events["type"] == "stream"
        assert events["arguments"]["x-initial-cluster-size"] == 3
        dead = await queue(names.dead_letter_queue)
        assert dead["type"] == "quorum"
        # Every queue llm-stream declares is durable, or exclusive to the connection that made it.
        listed = (await api.get("/api/queues/%2F", params={"columns": "name,durable,exclusive"})).json()
        transient_shared = [q["name"] for q in listed if not q["durable"] and not q.get("exclusive")]
        assert transient_shared == []


async def test_no_deprecated_broker_feature_is_in_use(
    stack: Deployment, broker: Broker, client: httpx.AsyncClient
) -> None:
    if (broker.major or 0) < 4:
        pytest.skip(f"{broker.description}: the deprecated-features API exists from RabbitMQ 4.0")
    await answer_one(client, stack)
    async with broker.management(timeout=10) as api:
        response = await api.get("/api/deprecated-features/used")
    assert response.status_code == 200, response.text
    assert response.json() == [], response.json()


async def test_queues_created_without_replication_arguments_keep_working(
    make_deployment: Callable[[], Deployment], broker: Broker, client: httpx.AsyncClient
) -> None:
    stack = make_deployment()
    env = {name.lower(): value for name, value in stack.names.env().items()}
    earlier = Topology.from_settings(BrokerSettings(rabbit_mq=broker.amqp_url, **env))
    connection = await aio_pika.connect(broker.amqp_url)
    try:  # as a release before the replication settings declared them
        channel = await connection.channel()
        for name in Topology.QUEUES:
            await declare_queue(channel, replace(getattr(earlier, name), replication={}))
    finally:
        await connection.close()
    stack.api()
    stack.worker()
    stack.start()
    await answer_one(client, stack)
    async with broker.management(timeout=10) as api:
        response = await api.get(f"/api/queues/%2F/{quote(stack.names.task_queue, safe='')}")
    assert response.status_code == 200, response.text
    assert "x-quorum-initial-group-size" not in response.json()["arguments"]  # kept as it was
