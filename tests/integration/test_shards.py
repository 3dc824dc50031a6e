"""A line spread over several task queues (``TASK_SHARDS``, docs/adr/0007), with real processes.

The API publishes each task to the shard of its session id, through the line's shard exchange,
which also routes it into the one queue log; workers consume every shard. Everything a line
promises holds across shards: every task is answered exactly, queue positions count the tasks
ahead in any shard and fall to 1, a queued task is cancelled wherever it waits, and a worker
never runs more than its concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import quote

import httpx
import pytest
from support.brokers import Broker

from .support.deployment import Deployment, prompt
from .support.sse import Event, assert_complete, assert_queued, read_stream
from .support.waits import llm_was_asked, until

pytestmark = [pytest.mark.integration, pytest.mark.broker]

SHARDS = 3
TASKS = 30


def sharded(make_deployment: Callable[[], Deployment]) -> Deployment:
    stack = make_deployment()
    stack.names = replace(stack.names, shards=SHARDS)
    return stack


async def test_tasks_spread_over_the_shards_wait_in_one_line_and_are_all_answered(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str, broker: Broker,
) -> None:
    stack = sharded(make_deployment)
    stack.api()
    stack.api()
    stack.worker(WORKER_CONCURRENCY="1")
    stack.start()
    api_a, api_b = (api.base_url for api in stack.apis)
    blocker = prompt("blocker", tokens=400, tps=40)  # 10 s: the worker's one slot is taken
    blocked = (await client.post(f"{api_a}/chat/async", json={"message": blocker.text})).json()
    await llm_was_asked(client, mock_url, [blocker.text])

    asks = [prompt(f"sharded-{i}", tokens=3, tps=50) for i in range(TASKS)]
    queued = []
    for index, ask in enumerate(asks):
        response = await client.post(f"{(api_a, api_b)[index % 2]}/chat/async", json={"message": ask.text})
        assert response.status_code == 200, response.text
        queued.append(response.json())
    # Spread: every shard holds some of them (30 session ids over 3 shards).
    counts = {}
    async with broker.management(timeout=10) as api:
        for index in range(SHARDS):
            name = stack.names.task_queue + (f".s{index}" if index else "")

            async def holds(name: str = name) -> bool:
                found = (await api.get(f"/api/queues/%2F/{quote(name, safe='')}")).json()
                counts[name] = found.get("messages_ready", 0)
                return counts[name] > 0

            await until(holds, what=f"tasks waiting in shard {name}", timeout=30)
    # One line: the last one waits behind every task queued before it, whatever its shard.
    seen: list[int] = []

    def note(item: object) -> None:
        if isinstance(item, Event) and item.kind == "queued":
            seen.append(item.data["position"])

    last = asyncio.create_task(
        read_stream(client, f"{api_b}{queued[-1]['stream_url']}", timeout=120, on_item=note)
    )

    async def told() -> bool:
        return bool(seen)

    await until(told, what="the last task's first position", timeout=60)
    assert seen[0] == TASKS, seen  # the 29 before it, in any shard, and itself
    assert (await client.delete(f"{api_a}/sessions/{blocked['session_id']}")).status_code in (200, 202)
    transcripts = await asyncio.gather(
        *(
            read_stream(client, f"{(api_b, api_a)[i % 2]}{q['stream_url']}", timeout=120)
            for i, q in enumerate(queued)
        )
    )
    for ask, transcript in zip(asks, transcripts, strict=True):
        assert_complete(transcript, ask.expected)
    positions = assert_queued(await last)
    assert positions[-1] == 1, positions


async def test_a_task_waiting_in_any_shard_is_cancelled_and_a_worker_keeps_its_concurrency(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str,
) -> None:
    stack = sharded(make_deployment)
    stack.api()
    stack.worker(WORKER_CONCURRENCY="2")
    stack.start()
    api = stack.apis[0].base_url
    # Two slots, three shards: however the tasks fall, two generations at once, no more.
    slow = {prompt(f"slow-{i}", tokens=400, tps=20).text: "" for i in range(8)}  # 20 s each
    for text in slow:
        slow[text] = (await client.post(f"{api}/chat/async", json={"message": text})).json()["session_id"]

    async def started() -> set[str]:
        return set(slow) & set((await client.get(f"{mock_url}/debug/streams")).json()["requested"])

    async def two_started() -> bool:
        return len(await started()) >= 2

    await until(two_started, what="two generations started", timeout=60)
    running = await started()
    await asyncio.sleep(1.0)  # a third would start at once if a slot were free
    assert await started() == running and len(running) == 2, running
    # Cancel every waiting one (they sit in all three shards): none reaches the LLM.
    waiting = [text for text in slow if text not in running]
    for text in [*waiting, *running]:
        assert (await client.delete(f"{api}/sessions/{slow[text]}")).status_code in (200, 202)
    after = prompt("after")
    answer = await client.post(f"{api}/chat", json={"message": after.text})
    assert answer.status_code == 200 and answer.text == after.expected, answer.text
    assert await started() == running, "a cancelled queued task reached the LLM"
