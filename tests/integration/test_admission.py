"""Admission control and live queue positions, against real processes and a real broker.

- Positions: tasks queued through two API replicas wait behind two busy workers; every
  client, reading from the replica that did not take its POST, sees its position fall one
  step at a time to 1, and the tasks start in the order of their positions.
- A full queue answers 503 ``overloaded`` with a ``Retry-After`` computed from the measured
  drain rate (the ceiling when nothing drains), in both dialects; nothing accepted is lost.
  The broker bounds the queue itself (``x-max-length`` with ``reject-publish``).
- Past ``MAX_OPEN_STREAMS`` a process refuses new streams with 503, in both dialects.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import aio_pika
import httpx
import openai
import pytest

from .support.deployment import Deployment, prompt
from .support.sse import Event, Transcript, assert_complete, assert_queued, read_stream
from .support.waits import llm_was_asked, queue_position, until

pytestmark = pytest.mark.integration

QUEUED_TASKS = 100
WORKERS = 2
RETRY_AFTER_MAX_S = 120
DISTINCT_POSITIONS_SEEN = 10
QUIET_MAX_S = 5.0


async def started_order(client: httpx.AsyncClient, mock: str, texts: list[str]) -> list[str]:
    """The prompts among ``texts`` in the order the mock LLM received them."""
    wanted = set(texts)
    report = (await client.get(f"{mock}/debug/streams")).json()
    return [asked for asked in report["requested"] if asked in wanted]


def started_sessions(log: Path) -> list[str]:
    """The session ids of a worker's generations, in the order it started them."""
    lines = log.read_text("utf-8", errors="replace").splitlines()
    return [found.group(1) for line in lines if "generation started" in line
            and (found := re.search(r"session_id=(\w+)", line))]


@pytest.mark.broker
async def test_positions_fall_to_one_across_replicas_and_tasks_start_in_that_order(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str
) -> None:
    stack = make_deployment()
    stack.api()
    stack.api()
    for _ in range(WORKERS):
        stack.worker(WORKER_CONCURRENCY="1")
    stack.start()
    api_a, api_b = (api.base_url for api in stack.apis)
    # Two long answers keep both workers busy while the others queue up behind them, until
    # every waiting client has been told its place (however long the POSTs take); then they
    # are cancelled and the queue drains.
    blockers = [prompt(f"blocker-{i}", tokens=2000, tps=20) for i in range(2)]
    blocking = []
    for ask in blockers:
        response = await client.post(f"{api_a}/chat/async", json={"message": ask.text})
        assert response.status_code == 200, response.text
        blocking.append(response.json()["session_id"])
    await llm_was_asked(client, mock_url, [ask.text for ask in blockers])
    # 200 ms answers: the line drains at about ten tasks a second, slowly enough for every
    # client to be told many steps of its fall.
    asks = [prompt(f"queued-{i}", tokens=4, tps=20) for i in range(QUEUED_TASKS)]
    readers: list[asyncio.Task[Transcript]] = []
    session_ids: list[str] = []
    seen_at: list[list[tuple[float, int]]] = []
    for index, ask in enumerate(asks):
        # The POST on one replica, the stream on the other: positions must be the same there.
        post_to, read_from = (api_a, api_b) if index % 2 == 0 else (api_b, api_a)
        queued = (await client.post(f"{post_to}/chat/async", json={"message": ask.text})).json()
        session_ids.append(queued["session_id"])
        times: list[tuple[float, int]] = []
        seen_at.append(times)

        def note(item: object, times: list[tuple[float, int]] = times) -> None:
            if isinstance(item, Event) and item.kind == "queued":
                times.append((time.monotonic(), item.data["position"]))

        readers.append(asyncio.create_task(
            read_stream(client, f"{read_from}{queued['stream_url']}", timeout=200, on_item=note)
        ))

    async def everyone_told() -> bool:
        return all(seen_at)

    # Bounded by the readers' own timeout, not by how fast a busy machine opens 100 streams.
    await until(
        everyone_told, what=f"a first position for each of {QUEUED_TASKS} waiting clients", timeout=170
    )
    for sid in blocking:
        assert (await client.delete(f"{api_a}/sessions/{sid}")).status_code in (200, 202)
    transcripts = await asyncio.gather(*readers)

    for ask, transcript in zip(asks, transcripts, strict=True):
        assert_complete(transcript, ask.expected)
    positions = [assert_queued(transcript) for transcript in transcripts]
    # Every one waited behind the blockers: each was told where it stood, at once, and its
    # position fell to 1 before it started.
    for index, told in enumerate(positions):
        assert told, f"task {index} never got a queue position"
        assert told[0] <= index + 1, (index, told)
        assert told[-1] == 1, (index, told)
    # The last one's client was told as its position fell, from where it started to 1. Two
    # workers take two tasks at a time; the keeper recomputes positions once per burst of
    # log records, and a busy machine makes bursts longer, so steps may be skipped: the
    # count asked for is far below the ~50 changes, and far above a start and an end.
    last = positions[-1]
    assert last[0] > QUEUED_TASKS // 2 and len(set(last)) >= DISTINCT_POSITIONS_SEEN, last
    # The tasks were taken in the order of their positions. Each worker (one task at a
    # time, prefetch 1) took its tasks in queue order; across workers the order in which
    # requests reach the LLM depends on scheduling, so it is not compared.
    order = await started_order(client, mock_url, [ask.text for ask in asks])
    assert sorted(order) == sorted(ask.text for ask in asks)
    place = {sid: index for index, sid in enumerate(session_ids)}
    for worker in stack.workers:
        taken = [place[sid] for sid in started_sessions(worker.log_path) if sid in place]
        assert taken == sorted(taken), f"{worker.name} took tasks out of queue order: {taken}"
    # Told again about every second while waiting, unchanged or not. A busy machine delays a
    # beat by a second or two; a replica that stopped telling would leave a waiter silent
    # for the rest of its wait (the longest waiter waited for every POST and the whole drain).
    longest = max(seen_at, key=lambda times: times[-1][0] - times[0][0])
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(longest)]
    assert gaps and max(gaps) <= QUIET_MAX_S, gaps
    assert longest[-1][0] - longest[0][0] > QUIET_MAX_S + 1, longest  # long enough to tell
    # An ETA once the workers have been seen draining the queue.
    last_events = [t.events for t in transcripts[-5:]]
    etas = [e.data["eta_s"] for events in last_events for e in events if e.kind == "queued"]

    assert any(eta is not None and eta > 0 for eta in etas), etas


async def test_a_queued_background_response_reports_its_position(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str
) -> None:
    stack = make_deployment()
    stack.api()
    stack.api()
    stack.worker(WORKER_CONCURRENCY="1")
    stack.start()
    api_a, api_b = (api.base_url for api in stack.apis)
    sdk = openai.AsyncOpenAI(base_url=f"{api_a}/v1", api_key="unused", max_retries=0)
    # Long enough for the other replica's first lookup of a session it never saw (seconds).
    blocker = prompt("responses-blocker", tokens=200, tps=20)
    await sdk.responses.create(model="mock", input=blocker.text, background=True)
    await llm_was_asked(client, mock_url, [blocker.text])
    asks = [prompt(f"responses-{i}", tokens=3) for i in range(3)]
    waiting = [await sdk.responses.create(model="mock", input=a.text, background=True) for a in asks]
    other = openai.AsyncOpenAI(base_url=f"{api_b}/v1", api_key="unused", max_retries=0)
    retrieved: list[object] = []

    async def third_in_line() -> bool:
        # The other replica learns the queue from the queue log, a moment after the POSTs.
        last = await other.responses.retrieve(waiting[-1].id)
        retrieved.append(last.model_extra)
        assert last.status == "queued", last
        return (last.model_extra or {}).get("queue", {}).get("position") == 3

    await until(third_in_line, what=f"position 3 on the other replica (retrieved {retrieved[-3:]})")
    done = await other.responses.retrieve(waiting[-1].id)
    deadline = time.monotonic() + 30
    while done.status != "completed" and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        done = await other.responses.retrieve(waiting[-1].id)
    assert done.status == "completed" and "queue" not in (done.model_extra or {})
    await sdk.close()
    await other.close()


@pytest.mark.broker
async def test_a_full_queue_refuses_with_a_computed_retry_after_and_loses_nothing(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    stack = make_deployment()
    bound = {"MAX_QUEUED_TASKS": "4", "RETRY_AFTER_MAX_S": str(RETRY_AFTER_MAX_S)}
    api = stack.api(**bound).base_url
    worker = stack.worker(WORKER_CONCURRENCY="1", **bound)
    stack.start()
    worker.stop()  # nothing drains: the queue fills

    asks = [prompt(f"bounded-{i}", tokens=5, tps=50) for i in range(4)]
    accepted = []
    for ask in asks:
        response = await client.post(f"{api}/chat/async", json={"message": ask.text})
        assert response.status_code == 200, response.text
        accepted.append(response.json()["stream_url"])
    await queue_position(client, f"{api}{accepted[-1]}", len(asks))  # the queue log has told the API
    refused = await client.post(f"{api}/chat/async", json={"message": "one too many"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "overloaded" and "MAX_QUEUED_TASKS" in refused.json()["message"]
    # Nothing drains: the longest wait.
    assert refused.headers["Retry-After"] == str(RETRY_AFTER_MAX_S)

    sdk = openai.AsyncOpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError) as raised:
        await sdk.chat.completions.create(model="mock", messages=[{"role": "user", "content": "too many"}])
    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "overloaded", raised.value.body
    assert raised.value.response.headers["Retry-After"] == str(RETRY_AFTER_MAX_S)

    # The broker bounds the queue too: a publish that bypasses the API is refused (a quorum
    # queue may take one more than its bound before it refuses).
    connection = await aio_pika.connect(stack.broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        intake = await channel.get_exchange(f"{stack.names.task_queue}.intake")
        refusals = 0
        for _ in range(2):
            try:
                await intake.publish(aio_pika.Message(b"{}", headers={"session_id": "x"}), routing_key="")
            except aio_pika.exceptions.DeliveryError:
                refusals += 1
        assert refusals >= 1, "the broker took tasks past x-max-length"

    # Draining again: every accepted answer arrives; a refusal now names a shorter wait,
    # from the rate at which the worker takes tasks.
    stack.worker(WORKER_CONCURRENCY="1", **bound)
    stack.start()
    transcripts = await asyncio.gather(*(read_stream(client, f"{api}{url}", timeout=30) for url in accepted))
    for ask, transcript in zip(asks, transcripts, strict=True):
        assert_complete(transcript, ask.expected)
    refused_again = None
    deadline = time.monotonic() + 60
    index = 0
    while index < 60 and time.monotonic() < deadline:
        slow = prompt(f"slow-{index}", tokens=10, tps=20)
        response = await client.post(f"{api}/chat/async", json={"message": slow.text})
        if response.status_code == 503:
            if response.headers["Retry-After"] == str(RETRY_AFTER_MAX_S):
                # The queue log has not yet told the API that the first four left: ask again.
                await asyncio.sleep(0.2)
                continue
            refused_again = response
            break
        index += 1
    assert refused_again is not None, "the queue never filled while draining"
    assert 1 <= int(refused_again.headers["Retry-After"]) < RETRY_AFTER_MAX_S, refused_again.text
    await sdk.close()


async def test_past_max_open_streams_a_new_stream_is_refused_in_both_dialects(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    stack = make_deployment()
    api = stack.api(MAX_OPEN_STREAMS="2").base_url
    stack.start()  # no worker: the sessions wait, their streams stay open
    sessions = [
        (await client.post(f"{api}/chat/async", json={"message": f"waiting {i}"})).json() for i in range(3)
    ]
    opened = [asyncio.Event(), asyncio.Event()]
    readers = [
        asyncio.create_task(read_stream(client, f"{api}{s['stream_url']}", timeout=30, opened=o))
        for s, o in zip(sessions, opened, strict=False)
    ]
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 10)
    await asyncio.sleep(0.2)
    refused = await client.get(f"{api}{sessions[2]['stream_url']}")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "overloaded" and "MAX_OPEN_STREAMS" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) >= 1

    sdk = openai.AsyncOpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError) as raised:
        await sdk.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "a third stream"}], stream=True
        )
    assert raised.value.status_code == 503 and raised.value.body["code"] == "overloaded"
    # Without a stream the request is still taken.
    assert (await client.post(f"{api}/chat/async", json={"message": "no stream"})).status_code == 200
    for reader in readers:
        reader.cancel()
    await sdk.close()


@pytest.mark.broker
async def test_a_task_queue_declared_without_the_bound_is_used_as_it_is(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    """An upgrade: the queue exists from an older release, without x-max-length. The broker
    refuses to redeclare it with other arguments; the services use it as it is and say so."""
    stack = make_deployment()
    connection = await aio_pika.connect(stack.broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(stack.names.task_queue, durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 3,
            "x-dead-letter-exchange": stack.names.dead_letter_exchange,
            "x-dead-letter-routing-key": stack.names.dead_letter_queue,
        })
    api = stack.api().base_url
    worker = stack.worker()
    stack.start()
    ask = prompt("old-queue", tokens=5)
    queued = (await client.post(f"{api}/chat/async", json={"message": ask.text})).json()
    assert_complete(await read_stream(client, f"{api}{queued['stream_url']}", timeout=30), ask.expected)
    for service in (stack.apis[0], worker):
        assert "queue exists with other arguments" in service.log_path.read_text()
