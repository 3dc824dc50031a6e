"""The HTTP contract at its edges: refused input, unknown and silent sessions, broker outage,
the operational routes, and the direct LLM mode.

Processes of the module:

- ``api``: the normal API, with short stream timeouts and small size limits;
- ``orphan``: an API whose broker (and LLM) URL points at a closed port;
- ``direct``: an API with ``CHAT_DIRECT_LLM`` on, calling the mock itself.

No worker consumes the deployment's tasks: accepted requests stay queued, which is what the
statistics and silent-session tests rely on.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from .support.deployment import Deployment, prompt, session_id
from .support.processes import Service, free_port
from .support.sse import assert_error_end, read_stream

pytestmark = pytest.mark.integration

STREAM_WAIT_TIMEOUT_S = 1.5
STREAM_IDLE_TIMEOUT_S = 2.0
MAX_MESSAGE_CHARS = 1000
MAX_BODY_BYTES = 20_000


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    closed = free_port()  # nothing listens there
    module_deployment.api(
        STREAM_WAIT_TIMEOUT_S=str(STREAM_WAIT_TIMEOUT_S),
        STREAM_IDLE_TIMEOUT_S=str(STREAM_IDLE_TIMEOUT_S),
        MAX_MESSAGE_CHARS=str(MAX_MESSAGE_CHARS),
        MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        STATS_CACHE_S="0",
    )
    module_deployment.api(
        ready_path="/health",
        RABBIT_MQ=f"amqp://guest:guest@127.0.0.1:{closed}/",
        OPENAI_BASE_URL=f"http://127.0.0.1:{closed}/v1",
        LLM_MAX_RETRIES="0",
    )
    module_deployment.api(CHAT_DIRECT_LLM="true", LLM_MAX_RETRIES="0")
    return module_deployment.start()


@pytest.fixture(scope="module")
def api(stack: Deployment) -> str:
    return stack.apis[0].base_url


@pytest.fixture(scope="module")
def orphan(stack: Deployment) -> Service:
    return stack.apis[1]


@pytest.fixture(scope="module")
def direct(stack: Deployment) -> str:
    return stack.apis[2].base_url


# -- refused input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"\xff\xfe", b'{"message": "unterminated', b"{'message': 'single quotes'}"],
    ids=["text", "empty", "not-utf8", "truncated", "single-quotes"],
)
@pytest.mark.parametrize("path", ["/chat/async", "/chat"])
async def test_non_json_body_is_400(
    client: httpx.AsyncClient, api: str, path: str, body: bytes
) -> None:
    response = await client.post(api + path, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_json"
    assert response.json()["message"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"message": ""},
        {"message": "   "},
        {"message": "\n\t "},
        {"message": None},
        {"message": 42},
        {"message": ["hello"]},
        {"message": {"text": "hello"}},
        {"message": "hi", "session_id": "-starts-with-dash"},
        {"message": "hi", "session_id": "has space"},
        {"message": "hi", "session_id": "slash/inside"},
        {"message": "hi", "session_id": ""},
        {"message": "hi", "session_id": "x" * 129},
        {"message": "hi", "session_id": "café"},
        {"message": "hi", "session_id": 12345},
        ["message", "hi"],
        "hi",
        42,
        None,
    ],
    ids=lambda payload: repr(payload)[:40],
)
@pytest.mark.parametrize("path", ["/chat/async", "/chat"])
async def test_invalid_request_is_422(
    client: httpx.AsyncClient, api: str, path: str, payload: object
) -> None:
    response = await client.post(api + path, content=json.dumps(payload))

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "validation_error"
    assert body["message"]


async def test_message_longer_than_the_limit_is_422(client: httpx.AsyncClient, api: str) -> None:
    response = await client.post(f"{api}/chat/async", json={"message": "a" * (MAX_MESSAGE_CHARS + 1)})

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


async def test_limits_count_characters_and_allow_the_longest_id(
    client: httpx.AsyncClient, api: str
) -> None:
    # 1000 two-byte characters: at the character limit, twice that in bytes.
    message = "é" * MAX_MESSAGE_CHARS
    longest = "A" + "b" * 127

    response = await client.post(f"{api}/chat/async", json={"message": message, "session_id": longest})

    assert response.status_code == 200, response.text
    assert response.json()["session_id"] == longest


async def test_body_larger_than_the_limit_is_413(client: httpx.AsyncClient, api: str) -> None:
    body = httpx.Request("POST", "/", json={"message": "a" * MAX_BODY_BYTES}).content

    response = await client.post(f"{api}/chat/async", content=body)

    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too_large"


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY_BYTES, 200), (MAX_BODY_BYTES + 1, 413)])
async def test_body_size_limit_is_exact(
    client: httpx.AsyncClient, api: str, size: int, status: int
) -> None:
    head = json.dumps({"message": prompt("padded").text}).encode()[:-1]
    body = head + b" " * (size - len(head) - 1) + b"}"  # JSON allows the padding
    assert len(body) == size

    response = await client.post(f"{api}/chat/async", content=body)

    assert response.status_code == status, response.text


async def test_chunked_body_larger_than_the_limit_is_413(client: httpx.AsyncClient, api: str) -> None:
    async def pieces():  # no Content-Length: the API must count while reading
        yield b'{"message": "'
        for _ in range(MAX_BODY_BYTES // 1000 + 1):
            yield b"a" * 1000
        yield b'"}'

    response = await client.post(f"{api}/chat/async", content=pieces())

    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too_large"


@pytest.mark.parametrize("bad", ["-dash", "has space", "x" * 129, "café"])
async def test_stream_of_a_malformed_id_is_422(client: httpx.AsyncClient, api: str, bad: str) -> None:
    response = await client.get(f"{api}/stream/{bad}")

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize("value", ["abc", "-1", "²", "1.5"])
async def test_non_numeric_last_event_id_is_400(client: httpx.AsyncClient, api: str, value: str) -> None:
    response = await client.get(f"{api}/stream/{session_id()}", headers={"Last-Event-ID": value.encode()})

    assert response.status_code == 400, response.text
    assert response.json()["error"]


# -- sessions that never answer --------------------------------------------------------------


async def test_unknown_session_ends_with_an_error_after_the_wait_timeout(
    client: httpx.AsyncClient, api: str
) -> None:
    started = time.monotonic()

    transcript = await read_stream(client, f"{api}/stream/{session_id('nobody')}", timeout=20)

    elapsed = time.monotonic() - started
    assert transcript.ids == [None]  # decided by this reader, not stored: a resume asks again
    assert_error_end(transcript)
    assert STREAM_WAIT_TIMEOUT_S - 0.2 <= elapsed < STREAM_WAIT_TIMEOUT_S + 8, elapsed


async def test_silent_session_ends_with_an_error_after_the_idle_timeout(
    client: httpx.AsyncClient, api: str
) -> None:
    # Queued, so known, but no worker ever answers.
    response = await client.post(f"{api}/chat/async", json={"message": prompt("silent").text})
    assert response.status_code == 200
    started = time.monotonic()

    transcript = await read_stream(client, api + response.json()["stream_url"], timeout=20)

    elapsed = time.monotonic() - started
    # The error is decided by this reader, not stored: a resume asks again. Before it, only
    # the session's queue position, also without ids: it stays where it is, since nobody takes
    # from this queue (tasks of earlier tests may wait ahead of it).
    assert set(transcript.ids) == {None}, transcript.ids
    assert {event.kind for event in transcript.events[:-1]} == {"queued"}, transcript.events
    assert len({event.data["position"] for event in transcript.events[:-1]}) == 1, transcript.events
    assert_error_end(transcript)
    assert STREAM_IDLE_TIMEOUT_S - 0.2 <= elapsed < STREAM_IDLE_TIMEOUT_S + 8, elapsed


# -- broker outage ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/chat/async", "/chat"])
async def test_post_without_broker_is_503_with_retry_after(
    client: httpx.AsyncClient, orphan: Service, path: str
) -> None:
    response = await client.post(orphan.base_url + path, json={"message": "hello"})

    assert response.status_code == 503, response.text
    assert response.json()["error"] == "broker_unavailable"
    assert int(response.headers["Retry-After"]) > 0


async def test_health_without_broker(client: httpx.AsyncClient, orphan: Service) -> None:
    live = await client.get(orphan.base_url + "/health")
    ready = await client.get(orphan.base_url + "/health/full")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 503
    assert ready.json()["status"] == "degraded"
    assert ready.json()["rabbitmq"] == "disconnected"


# -- operational routes ----------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient, api: str) -> None:
    live = await client.get(f"{api}/health")
    ready = await client.get(f"{api}/health/full")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    assert ready.json()["rabbitmq"] == "connected"


async def test_stats_count_tasks_waiting_for_a_worker(
    client: httpx.AsyncClient, api: str, stack: Deployment
) -> None:
    before = (await client.get(f"{api}/stats")).json()
    for i in range(3):
        response = await client.post(f"{api}/chat/async", json={"message": prompt(f"waiting-{i}").text})
        assert response.status_code == 200

    # Every publish was confirmed; give the count a few seconds anyway (STATS_CACHE_S is 0).
    expected = before["pending_tasks"] + 3
    deadline = time.monotonic() + 10
    while True:
        response = await client.get(f"{api}/stats")
        assert response.status_code == 200, response.text
        stats = response.json()
        if stats["pending_tasks"] == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)

    assert stats["pending_tasks"] == expected, f"3 tasks queued, /stats still says {stats}"
    assert stats["status"] == "ok"
    assert stats["queue"] == stack.names.task_queue
    assert stats["consumers"] == 0


async def test_llm_check_reaches_the_mock(client: httpx.AsyncClient, api: str) -> None:
    response = await client.get(f"{api}/test", headers={"Accept": "application/json"})

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


async def test_llm_check_reports_an_unreachable_llm(client: httpx.AsyncClient, orphan: Service) -> None:
    response = await client.get(orphan.base_url + "/test", headers={"Accept": "application/json"})

    assert response.status_code == 503, response.text
    assert response.json()["status"] == "error"


# -- direct mode -----------------------------------------------------------------------------


async def test_direct_mode_streams_the_answer(client: httpx.AsyncClient, direct: str) -> None:
    ask = prompt("direct", tokens=25)

    response = await client.post(f"{direct}/chat", json={"message": ask.text})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["X-Session-ID"]
    assert response.text == ask.expected


async def test_direct_mode_failure_ends_with_an_error_line(
    client: httpx.AsyncClient, direct: str
) -> None:
    response = await client.post(f"{direct}/chat", json={"message": prompt("direct-fail", fail=400).text})

    assert response.status_code == 200
    assert response.text.startswith("\n[error] "), repr(response.text)
    assert response.text.endswith("\n")
