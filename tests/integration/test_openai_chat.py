"""The official ``openai`` SDK, unchanged, against ``/v1/chat/completions`` and ``/v1/models``.

Answers go through the queue and the workers like any other. The mock LLM's answer is a digest
of the last user message, and its usage counts the words of every message, so an exact answer
and an exact ``prompt_tokens`` prove the whole conversation reached the LLM.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest
from llm_stream_mockllm.answer import choice_prompt, expected_answer

from .support.deployment import Deployment, prompt
from .support.processes import free_port
from .support.sse import read_stream

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(SSE_PING_S="1")
    module_deployment.worker()
    return module_deployment.start()


@pytest.fixture
async def sdk(stack: Deployment):
    base_url = f"{stack.apis[0].base_url}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
        yield c


def words(*texts: str) -> int:
    return sum(len(text.split()) for text in texts)


async def test_a_conversation_is_answered_whole(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("plain", tokens=15)
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": ask.text},
    ]

    completion = await sdk.chat.completions.create(model=MODEL, messages=history, temperature=0.2, seed=7)

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == ask.expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == words(*(m["content"] for m in history))
    assert completion.usage.completion_tokens == 15


async def test_a_stream_with_usage(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("streamed", tokens=40)

    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ask.text}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask.expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 40
    assert chunks[-1].usage.prompt_tokens == words(ask.text)


async def test_max_tokens_reaches_the_llm(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("capped", tokens=20)

    completion = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ask.text}], max_completion_tokens=4
    )

    assert completion.choices[0].message.content == prompt_answer(ask.text, 4)
    assert completion.choices[0].finish_reason == "length"


async def test_generation_parameters_reach_the_llm(
    sdk: openai.AsyncOpenAI, stack: Deployment, client: httpx.AsyncClient
) -> None:
    ask = prompt("parameters", tokens=5)
    messages = [{"role": "developer", "content": "rules"}, {"role": "user", "content": ask.text}]

    await sdk.chat.completions.create(
        model=MODEL, messages=messages, temperature=0.7, top_p=0.9, stop=["END", "STOP"], seed=42,
        user="user-1", max_tokens=50,
    )

    report = (await client.get(f"{stack.mock_url}/debug/streams")).json()
    [seen] = [p for p in report["parameters"] if p["prompt"] == ask.text]
    assert seen["roles"] == ["system", "user"]
    assert (seen["temperature"], seen["top_p"], seen["seed"], seen["user"]) == (0.7, 0.9, 42, "user-1")
    assert seen["stop"] == ["END", "STOP"] and seen["max_tokens"] == 50


def prompt_answer(text: str, tokens: int) -> str:
    from llm_stream_mockllm.answer import expected_answer

    return expected_answer(text, tokens)


async def test_twenty_concurrent_streams(sdk: openai.AsyncOpenAI) -> None:
    asks = [prompt(f"concurrent-{i}", tokens=30, tps=100) for i in range(20)]

    async def one(text: str) -> str:
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    answers = await asyncio.wait_for(asyncio.gather(*(one(a.text) for a in asks)), timeout=60)

    assert answers == [a.expected for a in asks]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 5}, "n"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"tools": [{"type": "function", "function": {"name": "not a name"}}]}, "tools[0].function.name"),
        ({"temperature": 5}, "temperature"),
        ({"messages": [{"role": "function", "content": "x", "name": "t"}]}, "messages[0].role"),
    ],
)
async def test_what_we_cannot_honour_is_a_clear_400(sdk: openai.AsyncOpenAI, extra: dict, param: str) -> None:
    arguments = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}

    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(**arguments)

    assert raised.value.status_code == 400
    assert raised.value.param == param
    assert param.split("[")[0].split(".")[0] in raised.value.message


async def test_several_choices_each_with_its_own_answer(stack: Deployment, sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("choices", tokens=8, tps=200)
    expected = [expected_answer(choice_prompt(ask.text, i), 8) for i in range(3)]
    messages = [{"role": "user", "content": ask.text}]

    completion = await sdk.chat.completions.create(model=MODEL, messages=messages, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert [c.message.content for c in completion.choices] == expected
    assert [c.finish_reason for c in completion.choices] == ["stop"] * 3

    stream = await sdk.chat.completions.create(model=MODEL, messages=messages, n=3, stream=True)
    session_id = stream.response.headers["X-Session-ID"]
    texts, finishes = ["", "", ""], [None, None, None]
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == expected and finishes == ["stop"] * 3
    # A native client reads choice 0 as the answer's text, as it always did.
    async with httpx.AsyncClient(timeout=30) as client:
        native = await read_stream(client, f"{stack.apis[0].base_url}/stream/{session_id}")
    assert "".join(e.data["chunk"] for e in native.events if "chunk" in e.data) == expected[0]


async def test_errors_are_openai_error_objects(stack: Deployment, client: httpx.AsyncClient) -> None:
    api = stack.apis[0].base_url
    bad_json = await client.post(f"{api}/v1/chat/completions", content=b"{nope")
    missing = await client.post(f"{api}/v1/chat/completions", json={"model": MODEL})
    unknown = await client.get(f"{api}/v1/nothing-here")
    native = await client.post(f"{api}/chat/async", content=b"{nope")

    for response, status in ((bad_json, 400), (missing, 400), (unknown, 404)):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"]
    assert missing.json()["error"]["param"] == "messages"
    assert native.json()["error"] == "invalid_json"  # native routes keep their own errors


async def test_models_lists_the_configured_model(sdk: openai.AsyncOpenAI) -> None:
    page = await sdk.models.list()
    assert MODEL in [model.id for model in page.data]
    assert (await sdk.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("no-such-model")


# -- a client that leaves ------------------------------------------------------------------


DROPS = 10


async def test_dropped_streams_stop_their_generations_upstream_within_a_second(
    stack: Deployment, client: httpx.AsyncClient
) -> None:
    """Clients leave mid-answer; each time, the LLM sees its request's connection closed."""
    api = stack.apis[0].base_url

    async def drop(index: int) -> tuple[str, float]:
        ask = prompt(f"dropped-{index}", tokens=400, tps=20)
        body = {"model": MODEL, "messages": [{"role": "user", "content": ask.text}], "stream": True}
        async with client.stream("POST", f"{api}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("data:") and '"content"' in line:
                    seen += 1
                    if seen >= 3:
                        break
            left_at = time.time()
        return ask.text, left_at  # leaving the block closed the connection

    left = dict(await asyncio.gather(*(drop(i) for i in range(DROPS))))

    seen: dict[str, float] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(seen) < len(left):
        report = (await client.get(f"{stack.mock_url}/debug/streams")).json()
        for closed in report["closed_early"]:
            if closed["prompt"] in left:
                seen.setdefault(closed["prompt"], closed["at"])
        await asyncio.sleep(0.02)
    assert len(seen) == len(left), "the LLM never saw some streams closed"
    delays = sorted(seen[text] - left[text] for text in left)
    print(f"drop to upstream close: p50 {delays[len(delays) // 2]:.3f} s, max {delays[-1]:.3f} s")
    assert delays[-1] < 1.0, delays


# -- the SDK's own retries -----------------------------------------------------------------


class LateBroker:
    """A TCP port that refuses connections until ``open()``, then forwards to the broker."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.pipes):
            task.cancel()


async def test_the_sdk_retries_after_our_retry_after(make_deployment, broker_url: str, mock_url: str) -> None:
    """While the broker is unreachable the API answers 503 with Retry-After; the SDK waits that
    long and retries by itself, and once the broker is back its retry is answered."""
    target = urlsplit(broker_url)
    late = LateBroker(target.hostname or "127.0.0.1", target.port or 5672)
    deployment = make_deployment()
    proxied = urlunsplit(target._replace(netloc=f"{target.netloc.rsplit('@', 1)[0]}@127.0.0.1:{late.port}"))
    api = deployment.api(ready_path="/health", RABBIT_MQ=proxied)
    deployment.worker()
    deployment.start()
    ask = prompt("retried", tokens=5)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            refused = await http.post(f"{api.base_url}/v1/chat/completions",
                                      json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "broker_unavailable"
        wait_s = int(refused.headers["retry-after"])

        async with openai.AsyncOpenAI(base_url=f"{api.base_url}/v1", api_key="unused", max_retries=3) as sdk:
            started = time.monotonic()
            call = asyncio.create_task(sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": ask.text}]
            ))
            await asyncio.sleep(0.5)  # the first attempt has been refused by now
            await late.open()
            completion = await asyncio.wait_for(call, timeout=60)
            elapsed = time.monotonic() - started
        assert completion.choices[0].message.content == ask.expected
        assert elapsed >= wait_s - 0.1  # it waited as long as we asked
    finally:
        await late.close()
