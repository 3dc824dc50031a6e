"""Losing the broker connection mid-answer: every process reconnects and the answer completes.

The test cuts every llm-stream connection through the broker's management API (what a broker
restart or a network blip does to the clients) while an answer is being generated and read.
The API's stream reader, the worker's task consumer and their publishers must all come back.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import httpx
import pytest
from support.brokers import Broker

from .support.deployment import Deployment, prompt
from .support.sse import assert_complete, read_stream

pytestmark = [pytest.mark.integration, pytest.mark.broker]

RECONNECT_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api()
    module_deployment.worker(LLM_MAX_RETRIES="0")
    return module_deployment.start()


async def cut_connections(broker: Broker, stack: Deployment) -> int:
    """Close the broker connections of the stack's processes; returns how many were closed.

    Connections are named ``llm-stream-<role>@<host>:<pid>``. The management API lists a new
    connection only after its next statistics round (5 s by default), so wait for one
    connection per process, within a deadline.
    """
    pids = {str(service.proc.pid) for service in (*stack.apis, *stack.workers) if service.proc}
    deadline = time.monotonic() + RECONNECT_DEADLINE_S
    async with broker.management(timeout=10) as api:
        while True:
            connections = (await api.get("/api/connections")).json()
            ours = [
                c["name"] for c in connections
                if str(c.get("client_properties", {}).get("connection_name", "")).rsplit(":", 1)[-1]
                in pids
            ]
            if len(ours) >= len(pids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for name in ours:
            response = await api.delete(f"/api/connections/{quote(name, safe='')}")
            assert response.status_code in (204, 404), response.text
        return len(ours)


async def test_an_answer_survives_losing_every_broker_connection(
    stack: Deployment, broker: Broker
) -> None:
    api = stack.apis[0].base_url
    question = prompt("outage", tokens=40, tps=10)
    async with httpx.AsyncClient(timeout=30) as client:
        queued = (await client.post(f"{api}/chat/async", json={"message": question.text})).json()
        first = await read_stream(client, f"{api}{queued['stream_url']}", max_events=5)
        assert len(first.events) == 5
        assert await cut_connections(broker, stack) == 2  # the API's and the worker's
        rest = await read_stream(
            client, f"{api}{queued['stream_url']}", last_event_id=first.ids[-1], timeout=60
        )
    # Resumed after event 5 with no gap or duplicate, and the two parts spell the answer.
    assert_complete(rest, question.expected[len(first.text) :], start=len(first.text))
    assert first.text + rest.text == question.expected


async def test_new_requests_are_served_after_the_connections_come_back(
    stack: Deployment, broker: Broker
) -> None:
    api = stack.apis[0].base_url
    assert await cut_connections(broker, stack) == 2
    question = prompt("after-outage", tokens=5)
    response = await served_again(api, question.text)
    assert response.text == question.expected


async def test_a_generation_is_cancelled_after_the_connections_came_back(
    stack: Deployment, broker: Broker
) -> None:
    """The worker follows the cancels stream again after its reconnect (on a new consumer,
    from the record after the last one it read), so a cancel sent afterwards still stops it."""
    api = stack.apis[0].base_url
    assert await cut_connections(broker, stack) == 2
    await served_again(api, prompt("served-again", tokens=3).text)
    question = prompt("cancel-after-outage", tokens=400, tps=10)  # 40 s: far longer than the test
    async with httpx.AsyncClient(timeout=30) as client:
        queued = (await client.post(f"{api}/chat/async", json={"message": question.text})).json()
        first = await read_stream(client, f"{api}{queued['stream_url']}", max_events=2)
        assert len(first.events) == 2, first
        cancelled = await client.delete(f"{api}/sessions/{queued['session_id']}")
        assert cancelled.status_code in (200, 202), cancelled.text
        rest = await read_stream(
            client, f"{api}{queued['stream_url']}", last_event_id=first.ids[-1], timeout=30
        )
    assert rest.last.data == {"type": "cancelled"}, rest.last


async def served_again(api: str, question: str) -> httpx.Response:
    """``POST /chat`` of ``question`` until it is served (every process reconnected); until
    then, every refusal is a 503 ``broker_unavailable``."""
    deadline = time.monotonic() + RECONNECT_DEADLINE_S
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            response = await client.post(f"{api}/chat", json={"message": question})
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "broker_unavailable"
            await asyncio.sleep(0.5)
    assert response.status_code == 200, response.text
    return response
