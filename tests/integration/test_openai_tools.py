"""Tools, structured outputs, reasoning and log probabilities through the queue, with real clients.

The official ``openai`` SDK, unchanged, drives ``/v1/chat/completions``: a whole tool loop
(the call, the tool's result, the final answer) streamed with the SDK's stream helper, which
assembles tool-call deltas; ``chat.completions.parse()`` with a pydantic model; reasoning and
log probabilities; a cancel in the middle of a streamed call; LangChain's ``bind_tools`` loop
and structured output. The mock LLM answers deterministically (``llm_stream_mockllm.typed``), so
each test knows every byte the client must end up with. The native stream shows the same
answer's parts to a client that asks for them (``?parts=true``), and resumes in the middle of
a tool call's arguments at the exact position.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from llm_stream_mockllm.answer import expected_answer
from llm_stream_mockllm.typed import ARGUMENT_PIECE, arguments_of, instance_of, tool_call_id

from .support.deployment import Deployment, prompt
from .support.sse import read_stream
from .support.tool_models import Forecast, GetWeather

pytestmark = [pytest.mark.integration, pytest.mark.broker]

MODEL = "gpt-4o-mini"


WEATHER_TOOL = openai.pydantic_function_tool(GetWeather, name="get_weather")


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(SSE_PING_S="1")
    module_deployment.api(SSE_PING_S="1")
    module_deployment.worker()
    return module_deployment.start()


@pytest.fixture
async def sdk(stack: Deployment):
    async with openai.AsyncOpenAI(
        base_url=f"{stack.apis[0].base_url}/v1", api_key="unused", max_retries=0
    ) as c:
        yield c


def expected_call(text: str, tool: dict, index: int = 0) -> tuple[str, str]:
    name = tool["function"]["name"]
    return tool_call_id(text, name, index), arguments_of(tool["function"]["parameters"], name)


async def test_a_streamed_tool_loop_with_the_sdk_stream_helper(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("weather", tokens=12, tps=200)
    question = ask.text + " [[mock:tool=get_weather]]"
    messages: list[dict] = [{"role": "user", "content": question}]

    async with sdk.chat.completions.stream(model=MODEL, messages=messages, tools=[WEATHER_TOOL]) as stream:
        deltas = [event async for event in stream if event.type == "tool_calls.function.arguments.delta"]
        first = await stream.get_final_completion()

    call_id, arguments = expected_call(question, WEATHER_TOOL)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (call_id, "get_weather", arguments)
    assert call.function.parsed_arguments == GetWeather.model_validate_json(arguments)
    # How many deltas carry the arguments depends on how the pieces fell into the workers'
    # flushes (text-like parts coalesce, as text does); what the client assembles does not.
    assert "".join(event.arguments_delta for event in deltas) == arguments

    messages += [
        choice.message.model_dump(include={"role", "content", "tool_calls"}, exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    async with sdk.chat.completions.stream(model=MODEL, messages=messages, tools=[WEATHER_TOOL]) as stream:
        final = await stream.get_final_completion()

    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == expected_answer("tool results: sunny, 21 C", 12)
    assert not final.choices[0].message.tool_calls


async def test_parallel_tool_calls_not_streamed_and_a_named_choice(sdk: openai.AsyncOpenAI) -> None:
    other = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    }
    question = prompt("both", tokens=5).text + " [[mock:tool=*]]"
    completion = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        tools=[WEATHER_TOOL, other],
    )
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.content is None
    assert [(c.id, c.function.arguments) for c in calls] == [
        expected_call(question, WEATHER_TOOL, 0),
        expected_call(question, other, 1),
    ]

    named = prompt("named", tokens=5).text
    completion = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": named}],
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        parallel_tool_calls=False,
    )
    (call,) = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == (
        "lookup",
        json.dumps({"query": "query value", "limit": 42}, separators=(",", ":")),
    )


async def test_parse_with_a_pydantic_model(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": prompt("parse", tokens=5).text}],
        response_format=Forecast,
    )
    parsed = completion.choices[0].message.parsed
    schema = openai.lib._pydantic.to_strict_json_schema(Forecast)
    assert parsed == Forecast.model_validate(instance_of(schema))


async def test_reasoning_and_log_probabilities_stream_in_their_own_fields(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("think", tokens=6)
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": ask.text + " [[mock:reasoning=4]]"}],
        stream=True,
        logprobs=True,
        top_logprobs=2,
    )
    chunks = [chunk async for chunk in stream]
    choices = [chunk.choices[0] for chunk in chunks if chunk.choices]
    reasoning = "".join((c.delta.model_extra or {}).get("reasoning_content") or "" for c in choices)
    content = "".join(c.delta.content or "" for c in choices)
    tokens = [entry.token for c in choices if c.logprobs for entry in c.logprobs.content or ()]
    text = ask.text + " [[mock:reasoning=4]]"
    assert reasoning == expected_answer("reasoning: " + text, 4)
    assert content == expected_answer(text, 6)
    assert "".join(tokens) == content and len(tokens) == 6
    assert all(len(entry.top_logprobs) == 2 for c in choices if c.logprobs for entry in c.logprobs.content)


async def test_native_clients_see_the_text_alone_or_every_part_and_resume_mid_arguments(
    stack: Deployment,
    sdk: openai.AsyncOpenAI,
) -> None:
    question = prompt("native", tokens=5, tps=100).text + " [[mock:tool=get_weather]] [[mock:reasoning=3]]"
    async with httpx.AsyncClient(timeout=30) as client:
        raw = await client.post(
            f"{stack.apis[0].base_url}/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": question}],
                "tools": [WEATHER_TOOL],
            },
        )
        assert raw.status_code == 200, raw.text
        session_id = raw.headers["X-Session-ID"]
        url = f"{stack.apis[-1].base_url}/stream/{session_id}"
        typed = await read_stream(client, url + "?parts=true")
        plain = await read_stream(client, url)

    call_id, arguments = expected_call(question, WEATHER_TOOL)
    reasoning = expected_answer("reasoning: " + question, 3)
    chunks = [event for event in typed.events if "chunk" in event.data]
    joined: dict[str, str] = {}
    for event in chunks:
        joined[event.data["part"]] = joined.get(event.data["part"], "") + event.data["chunk"]
    assert joined == {
        "reasoning": reasoning,
        "tool.0.id": call_id,
        "tool.0.name": "get_weather",
        "tool.0.args": arguments,
    }
    assert typed.events[-1].kind == "done"
    # Ids are positions over every part; the text alone is empty here (an answer of a call).
    assert typed.events[-1].id == len(reasoning + call_id + "get_weather" + arguments) + 1
    assert [event.kind for event in plain.events] == ["done"] and plain.events[-1].id == typed.events[-1].id

    # Resume in the middle of the arguments, on another replica: the rest, exactly.
    middle = len(reasoning + call_id + "get_weather") + ARGUMENT_PIECE + 2
    async with httpx.AsyncClient(timeout=30) as client:
        resumed = await read_stream(
            client, f"{stack.apis[0].base_url}/stream/{session_id}?parts=true", last_event_id=middle
        )
    rest = "".join(event.data["chunk"] for event in resumed.events if "chunk" in event.data)
    assert rest == arguments[ARGUMENT_PIECE + 2 :]
    assert {event.data["part"] for event in resumed.events if "chunk" in event.data} == {"tool.0.args"}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_parameter_the_llm_refuses_is_its_400_naming_the_field(
    sdk: openai.AsyncOpenAI, stream: bool
) -> None:
    # The mock allows 5 alternatives where OpenAI allows 20: the LLM's own refusal reaches the
    # client through the queue, as an OpenAI error naming the field.
    arguments = {"model": MODEL, "messages": [{"role": "user", "content": prompt("top", tokens=3).text}],
                 "logprobs": True, "top_logprobs": 9}
    if not stream:
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.chat.completions.create(**arguments)
        assert raised.value.param == "top_logprobs" and raised.value.code == "upstream_refused"
        return
    events = await sdk.chat.completions.create(**arguments, stream=True)
    with pytest.raises(openai.APIError) as raised:
        async for _ in events:
            pass
    assert "top_logprobs" in str(raised.value.message)
    assert (raised.value.body or {}).get("param") == "top_logprobs"


async def test_langchain_bind_tools_loop_and_structured_output(stack: Deployment) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=f"{stack.apis[0].base_url}/v1", api_key="unused", max_retries=0, timeout=30
    )
    question = prompt("langchain", tokens=8, tps=200).text + " [[mock:tool=GetWeather]]"
    bound = llm.bind_tools([GetWeather])
    gathered = None
    async for chunk in bound.astream([HumanMessage(question)]):
        gathered = chunk if gathered is None else gathered + chunk
    assert gathered is not None
    schema = convert_to_openai_tool(GetWeather)["function"]["parameters"]
    (call,) = gathered.tool_calls
    assert call["id"] == tool_call_id(question, "GetWeather", 0)
    assert call["name"] == "GetWeather"
    assert call["args"] == json.loads(arguments_of(schema, "GetWeather"))

    final = await bound.ainvoke(
        [HumanMessage(question), gathered, ToolMessage(content="sunny, 21 C", tool_call_id=call["id"])]
    )
    assert final.content == expected_answer("tool results: sunny, 21 C", 8)
    assert not final.tool_calls

    structured = llm.with_structured_output(Forecast)
    result = await structured.ainvoke(prompt("langchain-structured", tokens=5).text)
    strict = openai.lib._pydantic.to_strict_json_schema(Forecast)
    assert result == Forecast.model_validate(instance_of(strict))


async def test_a_cancel_in_the_middle_of_a_streamed_tool_call(
    stack: Deployment, sdk: openai.AsyncOpenAI
) -> None:
    question = prompt("cancel-call", tokens=5, tps=4).text + " [[mock:tool=get_weather]]"
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], tools=[WEATHER_TOOL], stream=True
    )
    session_id = stream.response.headers["X-Session-ID"]
    received = ""
    async with httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                calls = (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []
                received += "".join((call.function.arguments or "") for call in calls if call.function)
                if received and not received.endswith("}"):
                    cancel = await client.delete(f"{stack.apis[1].base_url}/sessions/{session_id}")
                    assert cancel.status_code in (200, 202), cancel.text
        assert (raised.value.body or {}).get("code") == "cancelled", raised.value
        # What the client was sent is exactly the start of the call's arguments, and a reader
        # on the other replica sees the same parts end as cancelled.
        _, arguments = expected_call(question, WEATHER_TOOL)
        assert received and arguments.startswith(received) and received != arguments
        seen = await read_stream(client, f"{stack.apis[1].base_url}/stream/{session_id}?parts=true")
    assert seen.events[-1].kind == "cancelled"
    args = "".join(e.data["chunk"] for e in seen.events if e.data.get("part") == "tool.0.args")
    assert arguments.startswith(args) and len(args) >= len(received)
