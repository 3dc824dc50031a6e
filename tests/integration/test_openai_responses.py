"""The official ``openai`` SDK, unchanged, against the Responses API (``/v1/responses``).

Two API processes and one worker: a response created on one replica is read, streamed,
resumed by ``sequence_number`` and cancelled on the other.
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from .support.deployment import Deployment, prompt

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    # Quick abandonment, so a background response nobody polls would be cut if it were not served.
    module_deployment.api(SSE_PING_S="1", PRESENCE_INTERVAL_S="0.5")
    module_deployment.api(SSE_PING_S="1", PRESENCE_INTERVAL_S="0.5")
    module_deployment.worker(ABANDON_TIMEOUT_S="2")
    return module_deployment.start()


@pytest.fixture
async def sdk(stack: Deployment):
    base_url = f"{stack.apis[0].base_url}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def other(stack: Deployment):
    """The same API through the second replica."""
    base_url = f"{stack.apis[1].base_url}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
        yield c


def words(*texts: str) -> int:
    return sum(len(text.split()) for text in texts)


async def test_a_background_response_is_retrieved_and_resumed_on_another_replica(
    sdk: openai.AsyncOpenAI, other: openai.AsyncOpenAI
) -> None:
    ask = prompt("background", tokens=30, tps=30)

    created = await sdk.responses.create(
        model=MODEL, input=ask.text, background=True, instructions="Be brief."
    )
    assert created.status in ("queued", "in_progress")

    # The other replica streams it from the start, then resumes after an event it saw.
    events = [event async for event in await other.responses.retrieve(created.id, stream=True)]
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == ask.expected

    deltas = [e for e in events if e.type == "response.output_text.delta"]
    middle = deltas[len(deltas) // 2]
    resumed = [
        event async for event in await sdk.responses.retrieve(
            created.id, stream=True, starting_after=middle.sequence_number
        )
    ]
    # Text may be cut differently after a resume, but a number always means the same position.
    again = [e.sequence_number for e in resumed]
    assert again == sorted(again) and again[0] > middle.sequence_number
    assert again[-4:] == numbers[-4:]
    assert [e.type for e in resumed][-4:] == [e.type for e in events][-4:]
    before = "".join(e.delta for e in events if e.type == "response.output_text.delta"
                     and e.sequence_number <= middle.sequence_number)
    after = "".join(e.delta for e in resumed if e.type == "response.output_text.delta")
    assert before + after == ask.expected

    finished = await other.responses.retrieve(created.id)
    assert finished.status == "completed"
    assert finished.output_text == ask.expected
    assert finished.usage is not None and finished.usage.output_tokens == 30


async def test_the_sdk_stream_helper_replays_a_finished_response_by_id(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("replayed", tokens=30)
    created = await sdk.responses.create(model=MODEL, input=ask.text, background=True)
    assert (await sdk.responses.retrieve(created.id)).status in ("queued", "in_progress", "completed")
    events = [event async for event in await sdk.responses.retrieve(created.id, stream=True)]
    assert events[-1].type == "response.completed"

    # The helper reads the whole stream and shows what follows ``starting_after``: it rebuilds
    # the response from the events, so the first must carry the response as it was created.
    async with sdk.responses.stream(response_id=created.id, starting_after=20) as stream:
        shown = [event async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == ask.expected
    assert shown and all(event.sequence_number > 20 for event in shown)
    assert events[0].response.output == [] and events[0].response.usage is None


async def test_a_response_without_background_waits_for_the_answer(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("foreground", tokens=10)
    conversation = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "reply"}]},
        {"role": "user", "content": [{"type": "input_text", "text": ask.text}]},
    ]

    response = await sdk.responses.create(model=MODEL, input=conversation)

    assert response.status == "completed"
    assert response.output_text == ask.expected
    assert response.usage is not None
    assert response.usage.input_tokens == words("earlier", "reply", ask.text)


async def test_a_streamed_response(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("response-stream", tokens=20)

    events = [e async for e in await sdk.responses.create(model=MODEL, input=ask.text, stream=True)]

    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ask.expected
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == ask.expected


async def test_a_background_response_is_cancelled_idempotently(
    sdk: openai.AsyncOpenAI, other: openai.AsyncOpenAI
) -> None:
    ask = prompt("cancel-me", tokens=200, tps=20)
    created = await sdk.responses.create(model=MODEL, input=ask.text, background=True)

    first = await other.responses.cancel(created.id)
    again = await sdk.responses.cancel(created.id)

    assert first.status == "cancelled"
    assert again.status == "cancelled"
    assert (await sdk.responses.retrieve(created.id)).status == "cancelled"


async def test_unknown_response_is_not_found(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve("resp_nobody_made_this")
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.cancel("resp_nobody_made_this_either")


async def test_responses_refuse_what_we_cannot_honour(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.responses.create(model=MODEL, input="hi", previous_response_id="resp_x")
    assert raised.value.param == "previous_response_id"




async def test_a_background_response_nobody_polls_is_not_abandoned(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("unwatched", tokens=60, tps=15)  # about 4 s, twice ABANDON_TIMEOUT_S
    created = await sdk.responses.create(model=MODEL, input=ask.text, background=True)

    for _ in range(40):
        await asyncio.sleep(0.5)
        response = await sdk.responses.retrieve(created.id)
        if response.status not in ("queued", "in_progress"):
            break

    assert response.status == "completed", response.error
    assert response.output_text == ask.expected
