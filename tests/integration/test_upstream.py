"""LLM failures and abandoned sessions: every stream ends, retries happen only where they help.

One worker (no SDK retries, so each LLM failure is one delivery of the task) and two APIs that
announce their readers every half second; the worker abandons a session after 2 s without one.
Tests run one after another, so the worker's counters move only for the test that is running.
"""

from __future__ import annotations

import httpx
import pytest

from .support.broker import message_count, wait_for_messages
from .support.deployment import Deployment, prompt
from .support.metrics import IN_PROGRESS, TASKS, UPSTREAM_ERRORS, Samples, scrape, wait_for_metric
from .support.sse import Transcript, assert_complete, assert_error_end, read_stream

pytestmark = pytest.mark.integration

ABANDON_TIMEOUT_S = 2
MAX_DELIVERIES = 3


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    # Every process declares the task queue: all with the same delivery limit, whichever is first.
    module_deployment.api(PRESENCE_INTERVAL_S="0.5", TASK_MAX_DELIVERIES=str(MAX_DELIVERIES))
    module_deployment.api(PRESENCE_INTERVAL_S="0.5", TASK_MAX_DELIVERIES=str(MAX_DELIVERIES))
    module_deployment.worker(
        LLM_MAX_RETRIES="0",
        ABANDON_TIMEOUT_S=str(ABANDON_TIMEOUT_S),
        TASK_MAX_DELIVERIES=str(MAX_DELIVERIES),
    )
    return module_deployment.start()


@pytest.fixture(scope="module")
def api(stack: Deployment) -> str:
    return stack.apis[0].base_url


@pytest.fixture(scope="module")
def metrics_url(stack: Deployment) -> str:
    return stack.workers[0].base_url + "/metrics"


async def converse(client: httpx.AsyncClient, api: str, message: str) -> Transcript:
    response = await client.post(f"{api}/chat/async", json={"message": message})
    assert response.status_code == 200, response.text
    return await read_stream(client, api + response.json()["stream_url"], timeout=60)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


async def dead_letters(stack: Deployment) -> int:
    return await message_count(stack.broker_url, stack.names.dead_letter_queue)


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_refused_request_ends_with_an_error_and_is_not_retried(
    client: httpx.AsyncClient, api: str, metrics_url: str, stack: Deployment, status: int
) -> None:
    ask = prompt("poison", fail=status)
    before, dead_before = await scrape(client, metrics_url), await dead_letters(stack)

    transcript = await converse(client, api, ask.text)

    assert transcript.answer_ids == [1]
    assert str(status) in assert_error_end(transcript)
    after = await wait_for_metric(
        client, metrics_url, lambda s: s.tasks("failed") > before.tasks("failed"),
        timeout=10, what="the task counted as failed",
    )
    assert delta(before, after, UPSTREAM_ERRORS, error_class=f"http_{status}", retryable="false") == 1
    assert delta(before, after, TASKS, outcome="retried") == 0
    assert await dead_letters(stack) == dead_before


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_transient_error_is_retried_and_the_answer_completes(
    client: httpx.AsyncClient, api: str, metrics_url: str, status: int
) -> None:
    ask = prompt("flaky", tokens=20, fail=status, fail_times=1)
    before = await scrape(client, metrics_url)

    transcript = await converse(client, api, ask.text)

    assert_complete(transcript, ask.expected)
    after = await wait_for_metric(
        client, metrics_url, lambda s: s.tasks("completed") > before.tasks("completed"),
        timeout=10, what="the task counted as completed",
    )
    assert delta(before, after, UPSTREAM_ERRORS, error_class=f"http_{status}", retryable="true") == 1
    assert delta(before, after, TASKS, outcome="retried") == 1


async def test_errors_on_every_delivery_end_in_the_dead_letter_queue(
    client: httpx.AsyncClient, api: str, metrics_url: str, stack: Deployment
) -> None:
    ask = prompt("down", fail=503)
    before, dead_before = await scrape(client, metrics_url), await dead_letters(stack)

    transcript = await converse(client, api, ask.text)

    assert transcript.answer_ids == [1]
    assert_error_end(transcript)
    await wait_for_messages(
        stack.broker_url, stack.names.dead_letter_queue, dead_before + 1, timeout=10
    )
    after = await scrape(client, metrics_url)
    assert delta(before, after, UPSTREAM_ERRORS, error_class="http_503", retryable="true") == MAX_DELIVERIES
    assert delta(before, after, TASKS, outcome="dead_lettered") == 1


async def test_connection_dropped_mid_answer_ends_cleanly(
    client: httpx.AsyncClient, api: str
) -> None:
    ask = prompt("dropped", tokens=20, fail_after=5)

    transcript = await converse(client, api, ask.text)

    if transcript.last.kind == "done":
        assert_complete(transcript, ask.expected)
    else:
        assert_error_end(transcript)
        # What was sent before the failure is the start of the real answer, never garbled.
        assert ask.expected.startswith(transcript.text)


async def test_unread_session_is_abandoned(
    client: httpx.AsyncClient, api: str, metrics_url: str
) -> None:
    # 1000 tokens at 20 per second would take 50 s; nobody ever opens the stream.
    ask = prompt("abandoned", tokens=1000, tps=20)
    before = await scrape(client, metrics_url)

    response = await client.post(f"{api}/chat/async", json={"message": ask.text})
    assert response.status_code == 200
    await wait_for_metric(
        client, metrics_url, lambda s: s.tasks("cancelled") > before.tasks("cancelled"),
        timeout=ABANDON_TIMEOUT_S + 15, what="the abandoned generation being cancelled",
    )

    await wait_for_metric(
        client, metrics_url, lambda s: s.value(IN_PROGRESS) == 0,
        timeout=5, what="no generation left running",
    )
    # A client arriving after all gets a stream that ends, with an error, never a hang.
    late = await read_stream(client, api + response.json()["stream_url"], timeout=10)
    assert_error_end(late)
    assert ask.expected.startswith(late.text)


@pytest.mark.parametrize("reader", [0, 1], ids=["same-process", "other-process"])
async def test_watched_session_outlives_the_abandon_timeout(
    client: httpx.AsyncClient, stack: Deployment, metrics_url: str, reader: int
) -> None:
    # About 4 s of answer, twice the abandon timeout: the open stream keeps it alive, whichever
    # API process serves it.
    ask = prompt("watched", tokens=40, tps=10)
    before = await scrape(client, metrics_url)
    api, reading_api = stack.apis[0].base_url, stack.apis[reader].base_url

    response = await client.post(f"{api}/chat/async", json={"message": ask.text})
    assert response.status_code == 200
    transcript = await read_stream(client, reading_api + response.json()["stream_url"], timeout=60)

    assert_complete(transcript, ask.expected)
    after = await scrape(client, metrics_url)
    assert delta(before, after, TASKS, outcome="cancelled") == 0
