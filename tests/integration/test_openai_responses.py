"""The official ``openai`` SDK, unchanged, against the Responses API (``/v1/responses``).

Two API processes and one worker: a response created on one replica is read, streamed,
resumed by ``sequence_number`` and cancelled on the other. Function tools (the SDK's stream
helper assembles the call), a conversation continued by ``previous_response_id`` on the other
replica, ``responses.parse()`` with a pydantic model, reasoning items, and the openai-node
SDK's by-id stream helper.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from llm_stream_mockllm.answer import expected_answer
from llm_stream_mockllm.typed import arguments_of, instance_of, tool_call_id

from .support.deployment import Deployment, prompt
from .support.tool_models import Forecast, GetWeather
from .support.waits import until

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
        await sdk.responses.create(model=MODEL, input="hi", conversation="conv_1")
    assert raised.value.param == "conversation"
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert (raised.value.param or "").startswith("tools[0]")
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.create(model=MODEL, input="hi", previous_response_id="resp_x")
    assert missing.value.param == "previous_response_id"


# -- function tools, structured output, reasoning, continued conversations ---------------------


def weather_tool() -> dict:
    schema = openai.lib._pydantic.to_strict_json_schema(GetWeather)
    return {"type": "function", "name": "get_weather", "parameters": schema, "strict": True}


@pytest.mark.broker
async def test_a_function_call_loop_streamed_and_continued_on_another_replica(
    sdk: openai.AsyncOpenAI, other: openai.AsyncOpenAI
) -> None:
    ask = prompt("rweather", tokens=12, tps=200)
    question = ask.text + " [[mock:tool=get_weather]]"
    tool = weather_tool()
    async with sdk.responses.stream(model=MODEL, input=question, tools=[tool]) as stream:
        deltas = [e async for e in stream if e.type == "response.function_call_arguments.delta"]
        first = await stream.get_final_response()

    call_id = tool_call_id(question, "get_weather", 0)
    arguments = arguments_of(tool["parameters"], "get_weather")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.call_id, call.name, call.arguments) == (call_id, "get_weather", arguments)
    assert "".join(e.delta for e in deltas) == arguments
    assert first.status == "completed" and first.store is True

    # The next turn names the stored response and sends only the tool's output, through the
    # other replica: it continues the conversation from the history stream.
    final = await other.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[tool],
        input=[{"type": "function_call_output", "call_id": call_id, "output": "sunny, 21 C"}],
    )
    assert final.status == "completed", final.error
    assert final.output_text == expected_answer("tool results: sunny, 21 C", 12)
    assert final.previous_response_id == first.id

    unstored = await sdk.responses.create(model=MODEL, input=prompt("unstored", tokens=3).text, store=False)
    with pytest.raises(openai.NotFoundError) as missing:
        await other.responses.create(model=MODEL, previous_response_id=unstored.id, input="and then?")
    assert missing.value.param == "previous_response_id"


async def test_structured_output_with_parse(sdk: openai.AsyncOpenAI) -> None:
    parsed = await sdk.responses.parse(
        model=MODEL, input=prompt("rparse", tokens=5).text, text_format=Forecast
    )
    schema = openai.lib._pydantic.to_strict_json_schema(Forecast)
    assert parsed.output_parsed == Forecast.model_validate(instance_of(schema))


@pytest.mark.broker
async def test_reasoning_and_calls_are_items_resumed_exactly_after_any_event(
    sdk: openai.AsyncOpenAI, other: openai.AsyncOpenAI
) -> None:
    question = prompt("ritems", tokens=6, tps=200).text + " [[mock:reasoning=4]] [[mock:tool=get_weather]]"
    created = await sdk.responses.create(model=MODEL, input=question, tools=[weather_tool()], background=True)
    whole = [event async for event in await sdk.responses.retrieve(created.id, stream=True)]
    final = whole[-1].response
    assert whole[-1].type == "response.completed"
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    assert final.output[0].content[0].text == expected_answer("reasoning: " + question, 4)
    reasoning = "".join(e.delta for e in whole if e.type == "response.reasoning_text.delta")
    assert reasoning == final.output[0].content[0].text
    numbers = [event.sequence_number for event in whole]
    assert numbers == sorted(set(numbers))

    # Replayed on the other replica from after any event: the same events, numbered alike. A
    # delta is cut where the pieces fell (live) or where its part ends (replayed), so the
    # replay is compared with a whole replay; a resume inside a delta gets the rest of it.
    replay = [e async for e in await other.responses.retrieve(created.id, stream=True)]
    for after in sorted({numbers[1], numbers[len(numbers) // 2], numbers[-3], numbers[-2]} | {
        e.sequence_number - 1 for e in replay if e.type.endswith(".delta")
    }):
        events = await other.responses.retrieve(created.id, stream=True, starting_after=after)
        resumed = [event.model_dump() async for event in events]
        wanted = [e.model_dump() for e in replay if e.sequence_number > after]
        assert [(e["type"], e["sequence_number"]) for e in resumed] == [
            (e["type"], e["sequence_number"]) for e in wanted
        ], after
        for got, full in zip(resumed, wanted, strict=True):
            if "delta" in full:
                assert full["delta"].endswith(got["delta"]) and got["delta"], (after, got, full)
                got = {**got, "delta": full["delta"]}
            assert got == full, after


# -- the openai-node SDK's by-id stream helper -------------------------------------------------
# It reads a whole replay and filters it itself, so a replay must open with the response as it
# was created and then give every event once, in order, or its snapshots are wrong. The SDK is
# installed from npm (``clients/package-lock.json``) the first time.

CLIENTS = Path(__file__).parent / "clients"
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed (scripts/ensure-test-tools.sh installs them)", pytrace=False)
    if not (CLIENTS / "node_modules" / "openai").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENTS, capture_output=True, text=True,
            timeout=NPM_TIMEOUT_S,
        )
        assert done.returncode == 0, (
            f"npm ci in {CLIENTS} failed (is the npm registry reachable?):\n{done.stderr}"
        )
    return CLIENTS / "responses_by_id.mjs"


async def by_id(script: Path, base_url: str, response_id: str, after: int) -> dict:
    process = await asyncio.create_subprocess_exec(
        "node", str(script), f"{base_url}/v1", response_id, str(after),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, f"the openai-node helper failed: {err.decode()[-2000:]}"
    return json.loads(out)


async def test_the_node_sdk_helper_resumes_a_finished_and_a_running_response(
    stack: Deployment, sdk: openai.AsyncOpenAI, node_sdk: Path
) -> None:
    done = prompt("node-done", tokens=40)
    created = await sdk.responses.create(model=MODEL, input=done.text)
    assert created.status == "completed"
    seen = await by_id(node_sdk, stack.apis[1].base_url, created.id, 20)
    assert seen["text"] == done.expected
    assert seen["shown"] and min(seen["shown"]) > 20
    assert done.expected.endswith(seen["deltas"]) and seen["deltas"]

    # One still being written when the helper starts: its replay opens as it was created.
    running = prompt("node-running", tokens=200, tps=20)  # about 10 s of text
    started = await sdk.responses.create(model=MODEL, input=running.text, background=True)

    async def has_text() -> bool:
        return bool((await sdk.responses.retrieve(started.id)).output_text)

    await until(has_text, what="the first text of a background response", timeout=120)
    assert (await sdk.responses.retrieve(started.id)).status == "in_progress"
    seen = await by_id(node_sdk, stack.apis[1].base_url, started.id, 10)
    assert seen["text"] == running.expected, (len(seen["text"]), len(running.expected))


async def test_the_node_sdk_helper_assembles_a_function_call(
    stack: Deployment, sdk: openai.AsyncOpenAI, node_sdk: Path
) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "name": "get_weather", "parameters": parameters}
    question = prompt("node-call", tokens=5).text + " [[mock:reasoning=3]] [[mock:tool=get_weather]]"
    created = await sdk.responses.create(model=MODEL, input=question, tools=[tool])
    calls = [item for item in created.output if item.type == "function_call"]
    assert len(calls) == 1
    seen = await by_id(node_sdk, stack.apis[1].base_url, created.id, 5)
    (call,) = [item for item in seen["output"] if item["type"] == "function_call"]
    assert call["name"] == "get_weather"
    assert call["arguments"] == arguments_of(parameters, "get_weather") == calls[0].arguments
