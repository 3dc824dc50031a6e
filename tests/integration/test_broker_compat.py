"""What the broker makes of llm-stream's topology, on whichever broker the run uses (3.x or 4.x).

RabbitMQ 4 changed defaults that matter here: quorum queues get a delivery limit of 20 unless
one is set, and transient non-exclusive queues (among others) are deprecated. The topology must
set its own limit, and use no deprecated feature while the system runs.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
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
        events = await queue(names.events_stream)
        assert events["type"] == "stream"
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
