"""Multi-turn on the native routes: ``/chat`` and ``/chat/async`` take ``messages`` and the
generation parameters; ``message`` alone keeps the old contract."""

from __future__ import annotations

import httpx
import pytest
from llm_stream_mockllm.answer import expected_answer

from .support.deployment import Deployment, prompt
from .support.sse import assert_complete, read_stream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(module_deployment: Deployment) -> str:
    module_deployment.api()
    module_deployment.worker()
    return module_deployment.start().apis[0].base_url


async def test_chat_answers_the_last_user_turn_of_a_conversation(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("multi-turn", tokens=12)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": ask.text},
    ]

    response = await client.post(f"{api}/chat", json={"messages": messages, "temperature": 0.1, "seed": 3})

    assert response.status_code == 200, response.text
    assert response.text == ask.expected


async def test_message_after_messages_is_the_last_user_turn(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("appended", tokens=8)
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]

    queued = await client.post(f"{api}/chat/async", json={"messages": history, "message": ask.text})

    assert queued.status_code == 200, queued.text
    assert_complete(await read_stream(client, api + queued.json()["stream_url"]), ask.expected)


async def test_max_tokens_caps_the_answer(client: httpx.AsyncClient, api: str) -> None:
    ask = prompt("capped-native", tokens=20)

    response = await client.post(f"{api}/chat", json={"message": ask.text, "max_tokens": 5, "stop": ["\n\n"]})

    assert response.text == expected_answer(ask.text, 5)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": None},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"message": "hi", "temperature": 3},
        {"message": "hi", "top_p": -1},
        {"message": "hi", "max_tokens": 0},
        {"message": "hi", "stop": ["a", "b", "c", "d", "e"]},
    ],
)
async def test_invalid_conversations_are_refused(client: httpx.AsyncClient, api: str, body: dict) -> None:
    response = await client.post(f"{api}/chat/async", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
