"""Any API process serves any session: resume with Last-Event-ID, ids mean the same everywhere.

Two APIs share one deployment (same queues, same events stream) and one worker. API B starts
after API A has already answered a session, and runs two uvicorn worker processes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import pytest

from .support.broker import run_sync
from .support.deployment import Deployment, prompt, session_id
from .support.sse import Transcript, assert_complete, read_stream

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class Early:
    """A session answered before API process B existed, as process A streamed it."""

    session_id: str
    transcript: Transcript


@pytest.fixture(scope="module")
def stack_and_early(module_deployment: Deployment) -> tuple[Deployment, Early]:
    module_deployment.api()
    module_deployment.worker()
    module_deployment.start()
    api_a = module_deployment.apis[0].base_url
    ask = prompt("before-b", tokens=30, tps=100)

    async def converse() -> Early:
        async with httpx.AsyncClient(timeout=30) as client:
            sid = await queue(client, api_a, ask.text)
            return Early(sid, await read_stream(client, f"{api_a}/stream/{sid}"))

    early = run_sync(converse)
    assert_complete(early.transcript, ask.expected)
    # Process B starts only now, and runs two uvicorn worker processes: whichever takes a
    # request must serve every session.
    module_deployment.api(UVICORN_WORKERS="2")
    return module_deployment.start(), early


@pytest.fixture(scope="module")
def stack(stack_and_early: tuple[Deployment, Early]) -> Deployment:
    return stack_and_early[0]


@pytest.fixture(scope="module")
def api_a(stack: Deployment) -> str:
    return stack.apis[0].base_url


@pytest.fixture(scope="module")
def api_b(stack: Deployment) -> str:
    return stack.apis[1].base_url


async def queue(client: httpx.AsyncClient, api: str, message: str, **extra: str) -> str:
    response = await client.post(f"{api}/chat/async", json={"message": message, **extra})
    assert response.status_code == 200, response.text
    return response.json()["session_id"]


def joined(first: Transcript, second: Transcript) -> Transcript:
    both = Transcript(second.status, second.headers, [*first.items, *second.items])
    both.ended_by_server = second.ended_by_server
    return both


@pytest.mark.broker
async def test_resume_on_another_process_continues_exactly(
    client: httpx.AsyncClient, api_a: str, api_b: str
) -> None:
    # 40 tokens at 10 per second: about four seconds, so the first reader leaves mid-answer.
    ask = prompt("resume", tokens=40, tps=10)
    sid = await queue(client, api_a, ask.text)

    first = await read_stream(client, f"{api_a}/stream/{sid}", max_events=5)
    assert not first.finished, "the answer ended before the client left; make it slower"
    last_seen = first.ids[-1]
    assert last_seen is not None
    second = await read_stream(client, f"{api_b}/stream/{sid}", last_event_id=last_seen)

    assert second.ids[0] > last_seen, (first.ids, second.ids)
    assert second.text == ask.expected[last_seen:]
    assert_complete(joined(first, second), ask.expected)


async def test_ids_are_the_same_positions_on_every_process(
    client: httpx.AsyncClient, api_a: str, api_b: str
) -> None:
    ask = prompt("same-ids", tokens=50, tps=100)
    sid = await queue(client, api_b, ask.text)

    on_a, on_b = await asyncio.gather(
        read_stream(client, f"{api_a}/stream/{sid}"), read_stream(client, f"{api_b}/stream/{sid}")
    )

    # One process holds the session from its POST, the other joins by replay: the pieces
    # may be cut differently, but every id is the same position in the same text.
    assert_complete(on_a, ask.expected)
    assert_complete(on_b, ask.expected)


async def test_resume_after_the_end_replays_only_what_follows(
    client: httpx.AsyncClient, api_a: str, api_b: str
) -> None:
    ask = prompt("replay", tokens=30, tps=100)
    sid = await queue(client, api_a, ask.text)
    whole = await read_stream(client, f"{api_a}/stream/{sid}")
    assert_complete(whole, ask.expected)
    assert len(whole.events) >= 3, "too few events to resume in the middle"
    middle = whole.ids[len(whole.events) // 2 - 1]

    for api in (api_a, api_b):
        rest = await read_stream(client, f"{api}/stream/{sid}", last_event_id=middle)
        assert_complete(rest, ask.expected[middle:], start=middle)


async def test_stream_opened_on_one_process_before_the_post_on_another(
    client: httpx.AsyncClient, api_a: str, api_b: str
) -> None:
    ask = prompt("cross-early", tokens=30)
    chosen = session_id("cross")
    opened = asyncio.Event()

    reader = asyncio.create_task(read_stream(client, f"{api_b}/stream/{chosen}", opened=opened))
    await asyncio.wait_for(opened.wait(), 10)
    await queue(client, api_a, ask.text, session_id=chosen)

    assert_complete(await asyncio.wait_for(reader, 30), ask.expected)


async def test_a_session_id_queued_on_one_process_conflicts_on_the_other(
    client: httpx.AsyncClient, api_a: str, api_b: str
) -> None:
    chosen = session_id("taken")
    ask = prompt("taken")
    await queue(client, api_a, ask.text, session_id=chosen)
    # Once process B has streamed the answer it has certainly heard of the session.
    assert_complete(await read_stream(client, f"{api_b}/stream/{chosen}"), ask.expected)

    again = await client.post(f"{api_b}/chat/async", json={"message": "again", "session_id": chosen})

    assert again.status_code == 409, again.text
    assert again.json()["error"] == "conflict"


@pytest.mark.broker
async def test_a_process_started_later_serves_earlier_sessions(
    client: httpx.AsyncClient, api_b: str, stack_and_early: tuple[Deployment, Early]
) -> None:
    _, early = stack_and_early

    on_b = await read_stream(client, f"{api_b}/stream/{early.session_id}")

    assert_complete(on_b, early.transcript.text)
