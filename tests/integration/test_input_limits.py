"""Input limits on the running stack: native routes and the real ``openai`` SDK.

The API and worker run with small limits (MAX_MESSAGES, MAX_TOTAL_CHARS, LLM_MAX_TOKENS,
MODELS_ALLOWED). Each refusal is a 4xx in the route's dialect that names the field; requests
within the limits are answered, and one that asks for no ``max_tokens`` gets the ceiling from
the workers (the mock LLM reports the parameters it received).
"""

from __future__ import annotations

import httpx
import openai
import pytest

from .support.deployment import Deployment, prompt

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
OTHER_MODEL = "mock-echo"
CEILING = 6
MAX_MESSAGES = 4
MAX_TOTAL_CHARS = 300
LIMITS = {
    "LLM_MAX_TOKENS": str(CEILING),
    "MAX_MESSAGES": str(MAX_MESSAGES),
    "MAX_TOTAL_CHARS": str(MAX_TOTAL_CHARS),
    "MODELS_ALLOWED": f"{MODEL},{OTHER_MODEL}",
}


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(**LIMITS)
    module_deployment.worker(LLM_MAX_TOKENS=str(CEILING))
    return module_deployment.start()


@pytest.fixture
def api(stack: Deployment) -> str:
    return stack.apis[0].base_url


@pytest.fixture
async def sdk(api: str):
    async with openai.AsyncOpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0) as c:
        yield c


def turns(count: int, content: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": content} for _ in range(count)]


# -- native routes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "param", "says"),
    [
        ({"messages": turns(MAX_MESSAGES + 1)}, "limit_exceeded", "messages", "MAX_MESSAGES (4)"),
        ({"messages": turns(2, "x" * 151)}, "limit_exceeded", "messages", "MAX_TOTAL_CHARS (300)"),
        ({"message": "x" * 301}, "limit_exceeded", "message", "MAX_TOTAL_CHARS (300)"),
        ({"message": "hi", "max_tokens": CEILING + 1}, "limit_exceeded", "max_tokens", "ceiling of 6"),
        ({"message": "hi", "model": "gpt-5"}, "model_not_allowed", "model", f"{MODEL}, {OTHER_MODEL}"),
    ],
)
@pytest.mark.parametrize("route", ["/chat/async", "/chat"])
async def test_native_refusals_name_the_field(
    client: httpx.AsyncClient, api: str, route: str, body: dict, code: str, param: str, says: str
) -> None:
    response = await client.post(f"{api}{route}", json=body)

    assert response.status_code == 422, response.text
    error = response.json()
    assert (error["error"], error["param"]) == (code, param)
    assert error["message"].startswith(f"{param}: ") and says in error["message"]


async def test_within_the_limits_is_answered(
    client: httpx.AsyncClient, api: str, stack: Deployment
) -> None:
    ask = prompt("at-the-limits", tokens=CEILING)
    history = [*turns(MAX_MESSAGES - 1, "q"), {"role": "user", "content": ask.text}]

    response = await client.post(
        f"{api}/chat", json={"messages": history, "max_tokens": CEILING, "model": OTHER_MODEL}
    )

    assert response.status_code == 200, response.text
    assert response.text == ask.expected


async def test_no_max_tokens_gets_the_ceiling(client: httpx.AsyncClient, api: str, stack: Deployment) -> None:
    ask = prompt("uncapped", tokens=20)

    response = await client.post(f"{api}/chat", json={"message": ask.text})

    assert response.status_code == 200, response.text
    assert response.text == prompt_answer(ask.text, CEILING)
    report = (await client.get(f"{stack.mock_url}/debug/streams")).json()
    [seen] = [p for p in report["parameters"] if p["prompt"] == ask.text]
    assert seen["max_tokens"] == CEILING


def prompt_answer(text: str, tokens: int) -> str:
    from llm_stream_mockllm.answer import expected_answer

    return expected_answer(text, tokens)


# -- the OpenAI dialects, through the SDK --------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "code", "param"),
    [
        ({"messages": turns(MAX_MESSAGES + 1)}, "limit_exceeded", "messages"),
        ({"messages": turns(1, "x" * (MAX_TOTAL_CHARS + 1))}, "limit_exceeded", "messages"),
        ({"max_tokens": CEILING + 1}, "limit_exceeded", "max_tokens"),
        ({"max_completion_tokens": CEILING + 1}, "limit_exceeded", "max_completion_tokens"),
        # max_completion_tokens wins, and max_tokens is held to the ceiling all the same.
        ({"max_completion_tokens": CEILING, "max_tokens": CEILING + 1}, "limit_exceeded", "max_tokens"),
        ({"model": "gpt-5"}, "model_not_allowed", "model"),
    ],
)
async def test_chat_completions_refusals(
    sdk: openai.AsyncOpenAI, arguments: dict, code: str, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(**{"model": MODEL, "messages": turns(1), **arguments})

    assert raised.value.status_code == 400
    assert (raised.value.code, raised.value.param) == (code, param)
    assert raised.value.body["message"].startswith(f"{param}: ")


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"input": turns(MAX_MESSAGES), "instructions": "brief"}, "input"),
        ({"input": "x" * (MAX_TOTAL_CHARS + 1)}, "input"),
        ({"input": "hi", "max_output_tokens": CEILING + 1}, "max_output_tokens"),
        ({"input": "hi", "model": "gpt-5"}, "model"),
    ],
)
async def test_responses_refusals(sdk: openai.AsyncOpenAI, arguments: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.responses.create(**arguments)

    assert raised.value.param == param


async def test_streamed_requests_are_refused_before_the_stream(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(model="gpt-5", messages=turns(1), stream=True)
    assert raised.value.param == "model"


async def test_within_the_limits_through_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    ask = prompt("sdk-at-the-limits", tokens=20)

    completion = await sdk.chat.completions.create(
        model=OTHER_MODEL, messages=[{"role": "user", "content": ask.text}], max_tokens=CEILING
    )
    response = await sdk.responses.create(input=ask.text, max_output_tokens=CEILING)

    assert completion.choices[0].message.content == prompt_answer(ask.text, CEILING)
    assert completion.choices[0].finish_reason == "length"
    assert response.output_text == prompt_answer(ask.text, CEILING)


async def test_models_lists_the_allowed_models(sdk: openai.AsyncOpenAI) -> None:
    page = await sdk.models.list()

    assert [model.id for model in page.data] == [MODEL, OTHER_MODEL]
    assert (await sdk.models.retrieve(OTHER_MODEL)).id == OTHER_MODEL
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("gpt-5")
