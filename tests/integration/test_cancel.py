"""Cancel a session from any replica: the LLM request is closed, every reader sees it end.

The mock LLM reports when a client closed a stream before its end (``GET /debug/streams``),
which is how these tests see a cancel reach the upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from .support.deployment import Deployment, prompt
from .support.sse import Comment, Event, Transcript, assert_positions, read_stream

pytestmark = pytest.mark.integration

UPSTREAM_CLOSE_LIMIT_S = 1.0


@pytest.fixture
def stack(make_deployment: Callable[[], Deployment]) -> Deployment:
    deployment = make_deployment()
    deployment.api()
    deployment.api()
    deployment.worker()
    return deployment.start()


async def closed_upstream_at(client: httpx.AsyncClient, mock: str, text: str, timeout: float = 5) -> float:
    """When the mock saw the stream of ``text`` closed early (wall clock)."""
    async with asyncio.timeout(timeout):
        while True:
            report = (await client.get(f"{mock}/debug/streams")).json()
            for closed in report["closed_early"]:
                if text in closed["prompt"]:
                    return closed["at"]
            await asyncio.sleep(0.05)


async def requested(client: httpx.AsyncClient, mock: str, text: str) -> bool:
    report = (await client.get(f"{mock}/debug/streams")).json()
    return any(text in asked for asked in report["requested"])


async def reading(client: httpx.AsyncClient, url: str, *, chunks: int) -> asyncio.Task[Transcript]:
    """Read ``url`` in the background; return once ``chunks`` chunks arrived."""
    arrived = asyncio.Event()
    seen = 0

    def count(item: Event | Comment) -> None:
        nonlocal seen
        if isinstance(item, Event) and item.kind == "chunk":
            seen += 1
            if seen >= chunks:
                arrived.set()

    reader = asyncio.create_task(read_stream(client, url, on_item=count, timeout=60))
    await asyncio.wait_for(arrived.wait(), 20)
    return reader


def assert_cancelled_end(transcript: Transcript) -> None:
    assert transcript.last.data == {"type": "cancelled"}, transcript.last
    assert all(event.kind in ("chunk", "queued") for event in transcript.events[:-1])
    assert_positions(transcript)
    assert transcript.ended_by_server


@pytest.mark.broker
async def test_cancel_on_another_replica_closes_the_llm_request_and_every_reader_sees_it(
    client: httpx.AsyncClient, stack: Deployment, mock_url: str
) -> None:
    api_a, api_b = (api.base_url for api in stack.apis)
    ask = prompt("cancel-running", tokens=400, tps=20)
    queued = (await client.post(f"{api_a}/chat/async", json={"message": ask.text})).json()
    sid = queued["session_id"]
    on_a = await reading(client, f"{api_a}/stream/{sid}", chunks=2)
    on_b = await reading(client, f"{api_b}/stream/{sid}", chunks=1)

    asked_at = time.time()
    response = await client.delete(f"{api_b}/sessions/{sid}")

    assert response.status_code == 200, response.text
    assert response.json() == {"session_id": sid, "status": "cancelled", "end": "cancelled"}
    closed_at = await closed_upstream_at(client, mock_url, ask.text)
    assert closed_at - asked_at < UPSTREAM_CLOSE_LIMIT_S, closed_at - asked_at
    for reader in (on_a, on_b):
        transcript = await asyncio.wait_for(reader, 10)
        assert_cancelled_end(transcript)
        assert ask.expected.startswith(transcript.text)
        assert len(transcript.text) < len(ask.expected)
    # Resume replays the end, on either replica, and a second cancel changes nothing.
    for api in (api_a, api_b):
        assert_cancelled_end(await read_stream(client, f"{api}/stream/{sid}"))
        again = await client.post(f"{api}/sessions/{sid}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled", again.text


async def test_cancelling_a_finished_session_changes_nothing_and_says_so(
    client: httpx.AsyncClient, stack: Deployment
) -> None:
    api_a, api_b = (api.base_url for api in stack.apis)
    ask = prompt("cancel-finished")
    sid = (await client.post(f"{api_a}/chat/async", json={"message": ask.text})).json()["session_id"]
    assert (await read_stream(client, f"{api_a}/stream/{sid}")).text == ask.expected

    for api in (api_a, api_b):  # B never saw the session: it learns from the history
        response = await client.delete(f"{api}/sessions/{sid}")
        assert response.status_code == 200, response.text
        assert response.json() == {"session_id": sid, "status": "finished", "end": "done"}
    replay = await read_stream(client, f"{api_b}/stream/{sid}")
    assert replay.text == ask.expected and replay.last.data == {"type": "done"}


@pytest.mark.broker
async def test_a_queued_task_is_dropped_without_calling_the_llm(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str
) -> None:
    deployment = make_deployment()
    api = deployment.api().base_url
    deployment.start()  # no worker yet: the task waits in the queue
    ask = prompt("cancel-queued")
    sid = (await client.post(f"{api}/chat/async", json={"message": ask.text})).json()["session_id"]

    response = await client.delete(f"{api}/sessions/{sid}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelling"

    deployment.worker()
    deployment.start()
    transcript = await read_stream(client, f"{api}/stream/{sid}", timeout=30)
    assert_cancelled_end(transcript)
    assert transcript.text == ""
    assert not await requested(client, mock_url, ask.text)


async def test_cancel_of_an_unknown_or_invalid_session(client: httpx.AsyncClient, stack: Deployment) -> None:
    api = stack.apis[0].base_url
    missing = await client.delete(f"{api}/sessions/never-queued-{time.monotonic_ns()}")
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"] == "not_found"
    invalid = await client.post(f"{api}/sessions/not%20valid/cancel")
    assert invalid.status_code == 422, invalid.text


async def test_a_sync_chat_whose_client_leaves_stops_its_generation(
    client: httpx.AsyncClient, stack: Deployment, mock_url: str
) -> None:
    api = stack.apis[0].base_url
    ask = prompt("cancel-sync", tokens=400, tps=20)
    async with client.stream("POST", f"{api}/chat", json={"message": ask.text}) as response:
        assert response.status_code == 200
        async for piece in response.aiter_text():
            if piece:
                break
        left_at = time.time()
    closed_at = await closed_upstream_at(client, mock_url, ask.text)
    assert closed_at - left_at < UPSTREAM_CLOSE_LIMIT_S, closed_at - left_at


async def test_an_async_session_outlives_its_reader(
    client: httpx.AsyncClient, stack: Deployment, mock_url: str
) -> None:
    api = stack.apis[0].base_url
    ask = prompt("keep-going", tokens=30, tps=30)
    sid = (await client.post(f"{api}/chat/async", json={"message": ask.text})).json()["session_id"]
    first = await read_stream(client, f"{api}/stream/{sid}", max_events=2)  # then leaves

    rest = await read_stream(client, f"{api}/stream/{sid}", last_event_id=first.ids[-1])
    assert first.text + rest.text == ask.expected
    report = (await client.get(f"{mock_url}/debug/streams")).json()
    assert not any(ask.text in closed["prompt"] for closed in report["closed_early"])
