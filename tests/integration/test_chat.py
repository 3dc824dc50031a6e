"""Answers reach clients whole and in order: async (SSE) and sync (plain text) modes.

One API process and one worker serve the whole module; every test uses its own prompts and
sessions, and waits for its own answers to end before it returns.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from .support.deployment import Deployment, prompt, session_id
from .support.metrics import scrape, wait_for_metric
from .support.sse import Comment, Event, assert_complete, read_stream

pytestmark = [pytest.mark.integration, pytest.mark.broker]

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(SSE_PING_S="1")
    module_deployment.worker()
    return module_deployment.start()


@pytest.fixture(scope="module")
def api(stack: Deployment) -> str:
    return stack.apis[0].base_url


async def queue(client: httpx.AsyncClient, api: str, message: str, **extra: str) -> dict[str, str]:
    response = await client.post(f"{api}/chat/async", json={"message": message, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert SESSION_ID.match(body["session_id"]), body
    assert response.headers["X-Session-ID"] == body["session_id"]
    assert body["stream_url"] == f"/stream/{body['session_id']}"
    return body


async def test_async_answer_arrives_whole_and_in_order(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("async", tokens=60)

    queued = await queue(client, api, ask.text)
    transcript = await read_stream(client, api + queued["stream_url"])

    assert transcript.headers["content-type"].startswith("text/event-stream")
    assert transcript.headers["x-accel-buffering"] == "no"
    assert_complete(transcript, ask.expected)


async def test_prompt_reaches_the_llm_unchanged(client: httpx.AsyncClient, api: str) -> None:
    # The mock's answer is a digest of the prompt: any change on the way shows as a wrong answer.
    ask = prompt('Grüße 🚀 日本語 "quoted" back\\slash <tag> €5\nsecond line\ttab', tokens=40)

    queued = await queue(client, api, ask.text)
    transcript = await read_stream(client, api + queued["stream_url"])

    assert_complete(transcript, ask.expected)


async def test_empty_answer_is_just_done(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("empty", tokens=0)

    queued = await queue(client, api, ask.text)
    transcript = await read_stream(client, api + queued["stream_url"])

    assert_complete(transcript, "")
    assert transcript.answer_ids == [1]


async def test_sync_answer_streams_as_plain_text(client: httpx.AsyncClient, api: str) -> None:
    # 20 tokens at 10 per second: the body must arrive in pieces over about 2 s.
    ask = prompt("sync", tokens=20, tps=10)
    pieces: list[tuple[float, bytes]] = []

    async with client.stream("POST", f"{api}/chat", json={"message": ask.text}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert SESSION_ID.match(response.headers["X-Session-ID"])
        async for piece in response.aiter_bytes():
            pieces.append((time.monotonic(), piece))

    assert b"".join(piece for _, piece in pieces).decode() == ask.expected
    assert len(pieces) >= 2
    assert pieces[-1][0] - pieces[0][0] > 0.5, "the answer was buffered, not streamed"


async def test_sync_keeps_the_client_session_id(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("sync-id")
    chosen = session_id("sync")

    response = await client.post(f"{api}/chat", json={"message": ask.text, "session_id": chosen})

    assert response.status_code == 200
    assert response.headers["X-Session-ID"] == chosen
    assert response.text == ask.expected


async def test_sync_failure_ends_with_an_error_line(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("sync-fail", fail=400)

    response = await client.post(f"{api}/chat", json={"message": ask.text})

    assert response.status_code == 200
    assert response.text.startswith("\n[error] "), repr(response.text)
    assert response.text.endswith("\n")
    assert "400" in response.text


async def test_stream_opened_before_the_post(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("early-reader", tokens=30)
    chosen = session_id("Early_1.2:3")  # every punctuation mark a session id may hold
    opened = asyncio.Event()

    reader = asyncio.create_task(read_stream(client, f"{api}/stream/{chosen}", opened=opened))
    await asyncio.wait_for(opened.wait(), 10)
    queued = await queue(client, api, ask.text, session_id=chosen)
    transcript = await asyncio.wait_for(reader, 30)

    assert queued["session_id"] == chosen
    assert_complete(transcript, ask.expected)


async def test_late_reader_gets_the_buffered_answer(
    client: httpx.AsyncClient, api: str, stack: Deployment
) -> None:
    ask = prompt("late-reader", tokens=40)
    metrics_url = stack.workers[0].base_url + "/metrics"
    completed = (await scrape(client, metrics_url)).tasks("completed")

    queued = await queue(client, api, ask.text)
    await wait_for_metric(
        client, metrics_url, lambda s: s.tasks("completed") > completed,
        timeout=20, what="the worker finishing the answer",
    )
    transcript = await read_stream(client, api + queued["stream_url"], timeout=10)

    assert_complete(transcript, ask.expected)


async def test_fifty_concurrent_sessions_each_get_their_own_answer(
    client: httpx.AsyncClient, api: str
) -> None:
    asks = [prompt(f"concurrent-{i}", tokens=30) for i in range(50)]

    async def converse(message: str):
        queued = await queue(client, api, message)
        return await read_stream(client, api + queued["stream_url"], timeout=60)

    transcripts = await asyncio.gather(*(converse(ask.text) for ask in asks))

    for ask, transcript in zip(asks, transcripts, strict=True):
        assert_complete(transcript, ask.expected)


async def test_heartbeat_comment_arrives_before_a_slow_first_chunk(
    client: httpx.AsyncClient, api: str
) -> None:
    # SSE_PING_S is 1 and the first token takes 2.5 s.
    ask = prompt("heartbeat", tokens=3, ttft_ms=2500)

    queued = await queue(client, api, ask.text)
    transcript = await read_stream(client, api + queued["stream_url"])

    first_event = next(i for i, item in enumerate(transcript.items) if isinstance(item, Event))
    assert any(isinstance(item, Comment) for item in transcript.items[:first_event]), transcript.items
    assert_complete(transcript, ask.expected)


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded"]
)
async def test_body_is_json_whatever_the_content_type(
    client: httpx.AsyncClient, api: str, content_type: str | None
) -> None:
    ask = prompt("content-type")
    headers = {"Content-Type": content_type} if content_type else {}
    body = httpx.Request("POST", "/", json={"message": ask.text}).content

    response = await client.post(f"{api}/chat/async", content=body, headers=headers)

    assert response.status_code == 200, response.text
    transcript = await read_stream(client, api + response.json()["stream_url"])
    assert_complete(transcript, ask.expected)


async def test_reusing_a_queued_session_id_conflicts(client: httpx.AsyncClient, api: str) -> None:
    chosen = session_id("reuse")
    await queue(client, api, prompt("reuse").text, session_id=chosen)

    for path in ("/chat/async", "/chat"):
        again = await client.post(f"{api}{path}", json={"message": "again", "session_id": chosen})
        assert again.status_code == 409, (path, again.text)
        assert again.json()["error"] == "conflict"


async def test_concurrent_posts_with_one_session_id_queue_once(
    client: httpx.AsyncClient, api: str
) -> None:
    chosen = session_id("race")
    asks = [prompt(f"race-{i}") for i in range(5)]

    responses = await asyncio.gather(
        *(client.post(f"{api}/chat/async", json={"message": a.text, "session_id": chosen}) for a in asks)
    )

    # One request queues the session; the others reuse a queued session_id: 409 each.
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 409, 409, 409, 409], statuses
    (winner,) = [a for a, r in zip(asks, responses, strict=True) if r.status_code == 200]
    assert_complete(await read_stream(client, f"{api}/stream/{chosen}"), winner.expected)
