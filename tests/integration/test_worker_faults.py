"""A worker that dies or is stopped mid-answer costs the client nothing.

Each test gets a deployment of its own (one API, two workers) because it ends a worker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import httpx
import pytest

from .support.deployment import Deployment, prompt
from .support.metrics import IN_PROGRESS, scrape, wait_for_metric
from .support.processes import Service
from .support.sse import Comment, Event, Transcript, assert_complete, assert_error_end, read_stream

pytestmark = [pytest.mark.integration, pytest.mark.broker]

SHUTDOWN_GRACE_S = 1


@pytest.fixture
def stack(make_deployment: Callable[[], Deployment]) -> Deployment:
    deployment = make_deployment()
    deployment.api()
    deployment.worker(SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S), LLM_MAX_RETRIES="0")
    deployment.worker(SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S), LLM_MAX_RETRIES="0")
    return deployment.start()


async def generating_worker(
    client: httpx.AsyncClient, workers: list[Service], timeout: float = 10
) -> Service:
    """The worker whose ``tasks_in_progress`` gauge shows the generation."""
    async with asyncio.timeout(timeout):
        while True:
            for worker in workers:
                if (await scrape(client, worker.base_url + "/metrics")).value(IN_PROGRESS) >= 1:
                    return worker
            await asyncio.sleep(0.1)


async def answer_in_progress(
    client: httpx.AsyncClient, api: str, message: str, *, chunks: int
) -> asyncio.Task[Transcript]:
    """Queue ``message`` and read its stream in the background; return once ``chunks`` arrived."""
    response = await client.post(f"{api}/chat/async", json={"message": message})
    assert response.status_code == 200, response.text
    arrived = asyncio.Event()
    seen = 0

    def count(item: Event | Comment) -> None:
        nonlocal seen
        if isinstance(item, Event) and item.kind == "chunk":
            seen += 1
            if seen >= chunks:
                arrived.set()

    reader = asyncio.create_task(
        read_stream(client, api + response.json()["stream_url"], on_item=count, timeout=60)
    )
    waiter = asyncio.create_task(arrived.wait())
    await asyncio.wait({reader, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if reader.done():
        reader.result()  # surface what ended the stream early
        raise AssertionError("the answer ended before the worker could be stopped; make it slower")
    assert arrived.is_set(), f"only {seen} chunks within 20s"
    return reader


async def test_sigkill_mid_answer_the_other_worker_completes_it(
    client: httpx.AsyncClient, stack: Deployment
) -> None:
    # 40 tokens at 10 per second: the worker dies with most of the answer still to come.
    ask = prompt("sigkill", tokens=40, tps=10)
    api = stack.apis[0].base_url

    reader = await answer_in_progress(client, api, ask.text, chunks=3)
    victim = await generating_worker(client, stack.workers)
    (survivor,) = [w for w in stack.workers if w is not victim]
    completed = (await scrape(client, survivor.base_url + "/metrics")).tasks("completed")
    victim.signal(signal.SIGKILL)

    assert await victim.wait_exit(10) == -signal.SIGKILL
    assert_complete(await asyncio.wait_for(reader, 60), ask.expected)
    await wait_for_metric(
        client, survivor.base_url + "/metrics", lambda s: s.tasks("completed") > completed,
        timeout=10, what="the surviving worker completing the redelivered task",
    )


async def test_sigterm_mid_answer_requeues_and_exits_promptly(
    client: httpx.AsyncClient, stack: Deployment
) -> None:
    ask = prompt("sigterm", tokens=40, tps=10)
    api = stack.apis[0].base_url

    reader = await answer_in_progress(client, api, ask.text, chunks=3)
    victim = await generating_worker(client, stack.workers)
    (survivor,) = [w for w in stack.workers if w is not victim]
    completed = (await scrape(client, survivor.base_url + "/metrics")).tasks("completed")
    victim.signal(signal.SIGTERM)

    # The grace period, then the interrupted generation is requeued and the process ends.
    assert await victim.wait_exit(SHUTDOWN_GRACE_S + 14) == 0
    assert_complete(await asyncio.wait_for(reader, 60), ask.expected)
    await wait_for_metric(
        client, survivor.base_url + "/metrics", lambda s: s.tasks("completed") > completed,
        timeout=10, what="the other worker completing the requeued task",
    )


async def test_a_task_whose_every_delivery_dies_ends_with_an_error_at_once(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    """The broker dead-letters a task at its delivery limit with no worker to end its session:
    a worker takes the dead-letter notice and every reader gets an error end, not a hang."""
    deployment = make_deployment()
    # The API declares the task queue too: with the workers' limit, whichever process starts
    # first (a slow machine decides that), the queue has a delivery limit of one.
    api = deployment.api(TASK_MAX_DELIVERIES="1").base_url
    first = deployment.worker(TASK_MAX_DELIVERIES="1")
    deployment.start()
    ask = prompt("dies-every-time", tokens=200, tps=20)

    reader = await answer_in_progress(client, api, ask.text, chunks=2)
    first.signal(signal.SIGKILL)
    assert await first.wait_exit(10) == -signal.SIGKILL
    # Every delivery dies. The broker gives up at its limit (rarely, RabbitMQ 3.10 does not
    # count a consumer's death against it and delivers once more: that one dies too).
    kills = 1
    while True:
        worker = deployment.worker(TASK_MAX_DELIVERIES="1")
        deployment.start()
        generating = asyncio.create_task(generating_worker(client, [worker], timeout=30))
        await asyncio.wait([generating, reader], return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            generating.cancel()
            break
        assert kills < 4, "the broker kept delivering a task whose every delivery died"
        worker.signal(signal.SIGKILL)
        assert await worker.wait_exit(10) == -signal.SIGKILL
        kills += 1

    transcript = await asyncio.wait_for(reader, 30)
    assert "dead-lettered" in assert_error_end(transcript), f"after {kills} deliveries died"


async def test_sigkill_mid_tool_call_the_client_assembles_exactly_the_same_call(
    client: httpx.AsyncClient, stack: Deployment
) -> None:
    import openai
    from llm_stream_mockllm.typed import arguments_of, tool_call_id

    fields = {f"field_{i}": {"type": "string"} for i in range(8)}
    tool = {"type": "function", "function": {"name": "fill_form", "parameters": {
        "type": "object", "properties": fields, "required": list(fields)}}}
    # About 25 argument pieces at 5 per second: the worker dies with most of the call to come.
    question = prompt("sigkill-tool", tokens=5, tps=5).text + " [[mock:tool=fill_form]]"
    pieces = 0
    arrived = asyncio.Event()

    async def read() -> tuple[str, str, str, str | None]:
        nonlocal pieces
        call_id = name = arguments = ""
        finish = None
        sdk = openai.AsyncOpenAI(base_url=f"{stack.apis[0].base_url}/v1", api_key="unused", max_retries=0)
        async with sdk:
            stream = await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}], tools=[tool],
                stream=True,
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    for call in choice.delta.tool_calls or ():
                        call_id += call.id or ""
                        name += (call.function.name or "") if call.function else ""
                        arguments += (call.function.arguments or "") if call.function else ""
                        pieces += 1
                        if pieces >= 4:
                            arrived.set()
        return call_id, name, arguments, finish

    reader = asyncio.create_task(read())
    waiter = asyncio.create_task(arrived.wait())
    await asyncio.wait({reader, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert arrived.is_set() and not reader.done(), f"only {pieces} tool-call deltas before the kill"
    victim = await generating_worker(client, stack.workers)
    victim.signal(signal.SIGKILL)
    assert await victim.wait_exit(10) == -signal.SIGKILL

    call_id, name, arguments, finish = await asyncio.wait_for(reader, 90)
    assert (call_id, name, finish) == (tool_call_id(question, "fill_form", 0), "fill_form", "tool_calls")
    assert arguments == arguments_of(tool["function"]["parameters"], "fill_form")
