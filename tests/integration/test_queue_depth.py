"""Queue depth on the API's ``/metrics``: from the management API, or from passive declarations
on the API's own connection when there is no management API (a broker without the plugin).

No worker runs at first, so the tasks stay ready in the queue; then a worker attaches and the
consumer count follows.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from .support.deployment import Deployment, prompt
from .support.metrics import Samples, scrape
from .support.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.broker]

# The labels of the task queue of a release without pools: its one pool and lane.
DEFAULT_LINE = {"role": "tasks", "pool": "default", "lane": "default"}
TASKS = 3
# The API caches queue figures for 5 s and the management API refreshes them every 5 s.
DEADLINE_S = 40.0


async def queue_tasks(client: httpx.AsyncClient, api: str, count: int) -> None:
    for i in range(count):
        response = await client.post(f"{api}/chat/async", json={"message": prompt(f"depth {i}").text})
        assert response.status_code == 200, response.text


async def wait_for_samples(
    client: httpx.AsyncClient, api: str, what: str, check, timeout: float = DEADLINE_S
) -> tuple[Samples, str]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"{api}/metrics")
        response.raise_for_status()
        samples = Samples(response.text)
        if check(samples):
            return samples, response.text
        if time.monotonic() > deadline:
            queue_lines = [line for line in response.text.splitlines() if "queue" in line]
            pytest.fail(f"/metrics never showed {what} within {timeout:g}s:\n" + "\n".join(queue_lines))
        await asyncio.sleep(0.5)


def tasks_ready(samples: Samples, queue: str) -> float:
    return samples.value("llmstream_queue_messages_ready", queue=queue, **DEFAULT_LINE)


def tasks_consumers(samples: Samples, queue: str) -> float:
    return samples.value("llmstream_queue_consumers", queue=queue, **DEFAULT_LINE)


async def test_depth_from_the_management_api(
    make_deployment, client: httpx.AsyncClient
) -> None:
    stack: Deployment = make_deployment()
    assert stack.management_url, "the run's broker has a management API"
    api = stack.api().base_url
    stack.start()
    queue = stack.names.task_queue

    await queue_tasks(client, api, TASKS)
    samples, text = await wait_for_samples(
        client, api, f"{TASKS} ready tasks", lambda s: tasks_ready(s, queue) == TASKS
    )
    assert samples.value("llmstream_queue_stats_up", source="management") == 1
    assert samples.value("llmstream_queue_messages_unacknowledged", queue=queue, **DEFAULT_LINE) == 0
    assert re.search(rf'llmstream_queue_messages_unacknowledged{{[^}}]*queue="{re.escape(queue)}"', text)
    assert tasks_consumers(samples, queue) == 0
    assert "queue depth from the management API" in stack.apis[0].tail(200)


async def test_depth_from_passive_declarations_without_the_management_api(
    make_deployment, client: httpx.AsyncClient
) -> None:
    stack: Deployment = make_deployment()
    nothing_there = f"http://guest:guest@127.0.0.1:{free_port()}"
    api_service = stack.api(RABBITMQ_MANAGEMENT_URL=nothing_there)
    api = api_service.base_url
    stack.start()
    queue = stack.names.task_queue

    await queue_tasks(client, api, TASKS)
    samples, text = await wait_for_samples(
        client, api, f"{TASKS} ready tasks", lambda s: tasks_ready(s, queue) == TASKS
    )
    assert samples.value("llmstream_queue_stats_up", source="passive") == 1
    assert tasks_consumers(samples, queue) == 0
    # A passive declaration cannot see unacknowledged messages: no series rather than a 0.
    assert "llmstream_queue_messages_unacknowledged{" not in text
    assert samples.value("llmstream_dead_letter_messages", pool="default") == 0

    # A worker attaches and takes the tasks: the consumer count follows.
    stack.worker()
    stack.start()
    samples, _ = await wait_for_samples(
        client, api, "one consumer and no ready task",
        lambda s: tasks_consumers(s, queue) == 1 and tasks_ready(s, queue) == 0,
    )
    await scrape(client, f"{api}/metrics")
    log = api_service.tail(400)
    assert log.count("queue depth from passive declarations") == 1, log
    assert nothing_there.rsplit("@", 1)[-1] in log
