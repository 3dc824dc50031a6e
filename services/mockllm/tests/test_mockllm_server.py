from __future__ import annotations

import time

import httpx
import openai
import pytest
from llm_stream_mockllm.answer import answer_tokens, expected_answer
from llm_stream_mockllm.embed import serve_in_background
from llm_stream_mockllm.settings import Settings
from openai import AsyncOpenAI

TOKENS = 12  # the answer length of the conftest's mock


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


async def collect(
    client: AsyncOpenAI, prompt: str, **kwargs: object
) -> list[openai.types.chat.ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=user(prompt),
        stream=True,
        **kwargs,  # type: ignore[call-overload]
    )
    return [chunk async for chunk in stream]


async def test_stream_sends_the_answer_token_by_token(client: AsyncOpenAI) -> None:
    chunks = await collect(client, "hello there")
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert contents == answer_tokens("hello there", TOKENS)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].model == "gpt-4o-mini"


async def test_answers_are_deterministic_and_differ_by_prompt(client: AsyncOpenAI) -> None:
    def text(chunks: list[openai.types.chat.ChatCompletionChunk]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    first, again, other = [text(await collect(client, p)) for p in ("a", "a", "b")]
    assert first == again == expected_answer("a", TOKENS)
    assert other != first


async def test_answer_depends_on_the_last_user_message_only(client: AsyncOpenAI) -> None:
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]},
    ]
    reply = await client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == expected_answer("part one\ntwo", TOKENS)


async def test_usage_chunk_when_asked(client: AsyncOpenAI) -> None:
    chunks = await collect(client, "count me", stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == TOKENS
    assert chunks[-1].usage.prompt_tokens == 4


async def test_max_tokens_caps_the_answer(client: AsyncOpenAI) -> None:
    chunks = await collect(client, "long [[mock:tokens=30]]", max_tokens=4)
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == answer_tokens("long [[mock:tokens=30]]", 4)
    assert chunks[-1].choices[0].finish_reason == "length"
    reply = await client.chat.completions.create(model="m", messages=user("long"), max_completion_tokens=3)
    assert reply.choices[0].message.content == expected_answer("long", 3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_non_streamed_completion(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(model="gpt-4o", messages=user("plain"))
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == expected_answer("plain", TOKENS)
    assert reply.choices[0].finish_reason == "stop"


async def test_tokens_directive(client: AsyncOpenAI) -> None:
    prompt = "short [[mock:tokens=3]]"
    chunks = await collect(client, prompt)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_answer(prompt, 3)
    assert len(await collect(client, "none [[mock:tokens=0]]")) == 2  # role + finish


async def test_timing_follows_ttft_and_tps(client: AsyncOpenAI) -> None:
    prompt = "slow [[mock:ttft_ms=150]] [[mock:tps=50]] [[mock:tokens=6]]"
    start = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=user(prompt), stream=True)
    arrivals = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 6
    assert arrivals[0] >= 0.14  # never early
    assert arrivals[-1] >= 0.14 + 5 / 50
    assert arrivals[-1] < 3.0  # and not absurdly late


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_fail_directive(client: AsyncOpenAI, status: int, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        await collect(client, f"boom [[mock:fail={status}]]")
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and {"message", "type", "code"} <= body.keys()


async def test_fail_times_then_succeeds_through_sdk_retries(mock_url: str) -> None:
    prompt = "flaky [[mock:fail=503]] [[mock:fail_times=2]] [[mock:retry_after_ms=5]]"
    async with AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=2) as client:
        chunks = await collect(client, prompt)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_answer(prompt, TOKENS)


async def test_fail_after_cuts_the_stream(client: AsyncOpenAI) -> None:
    received: list[str] = []
    stream = await client.chat.completions.create(
        model="m", messages=user("dies [[mock:fail_after=3]]"), stream=True
    )
    with pytest.raises(openai.APIConnectionError):  # the SDK wraps the broken read
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == answer_tokens("dies [[mock:fail_after=3]]", 3)


async def test_fail_after_cuts_a_completion(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=user("x [[mock:fail_after=2]]"))


async def test_bad_directive_is_a_400(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown directive"):
        await collect(client, "[[mock:nope=1]]")


async def test_models(client: AsyncOpenAI) -> None:
    ids = [model.id async for model in client.models.list()]
    assert "gpt-4o-mini" in ids


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/nope", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"[]", 400),
        ("POST", "/v1/chat/completions", b'{"model": "m"}', 400),
        ("POST", "/v1/chat/completions", b'{"model": "m", "messages": []}', 400),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400),
        ("POST", "/v1/chat/completions", b'{"model": "m", "messages": [3]}', 400),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            400,
        ),
    ],
)
async def test_errors_in_openai_format(
    mock_url: str, method: str, path: str, body: bytes | None, status: int
) -> None:
    async with httpx.AsyncClient(base_url=mock_url) as http:
        response = await http.request(method, path, content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert {"type", "code"} <= error.keys()


async def test_health(mock_url: str) -> None:
    async with httpx.AsyncClient(base_url=mock_url) as http:
        response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "ttft_ms": 10.0, "tokens": 12, "tps": 2000.0}


async def test_api_key_is_checked_when_set() -> None:
    settings = Settings(port=0, ttft_ms=0, tokens=2, tps=1000, api_key="secret")
    async with serve_in_background(settings) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                await collect(client, "hi")
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0) as client:
            assert len(await collect(client, "hi")) == 4
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/health")).status_code == 200


async def test_client_disconnect_stops_the_stream(mock_url: str) -> None:
    async with httpx.AsyncClient(base_url=mock_url) as http:
        body = {"model": "m", "stream": True, "messages": user("[[mock:tokens=100000]]")}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_bytes():
                break
    # The server stops writing; if it did not, shutting it down would wait for the stream.
