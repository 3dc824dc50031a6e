"""Four API replicas behind a real load balancer without affinity: every answer stays exact.

HAProxy (``support/balancer.py``) spreads every request round-robin over four API processes of
one deployment, served by two workers. Every client request goes through it, so a POST and the
GET of its stream usually land on different replicas, and a resume lands wherever the
balancer sends it. ``X-Served-By`` says which replica answered, and the tests check that the
spread really happened. Answers are checked character by character against the mock's
deterministic answers, and SSE ids against their positions.

The module shares one deployment for the tests that kill nothing; the others (a worker, an
API replica or the broker dies) get a deployment of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiormq.exceptions
import httpx
import pytest
from mqcommon.schemas import FRAMES_VERSION

from .support.balancer import SERVED_BY, Balancer, haproxy_program
from .support.deployment import Deployment, Prompt, prompt, session_id
from .support.metrics import IN_PROGRESS, Samples, scrape, wait_for_metric
from .support.processes import Service
from .support.restartable_broker import NodeError, RestartableNode
from .support.sse import (
    Comment,
    Event,
    Transcript,
    assert_complete,
    assert_error_end,
    assert_positions,
    parse,
    read_stream,
)
from .support.waits import until as eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _haproxy_installed() -> None:
    # A missing balancer is a broken test machine, never a reason to skip.
    if haproxy_program() is None:
        pytest.fail(
            "haproxy is not installed: run scripts/ensure-test-tools.sh (make test does)", pytrace=False
        )

REPLICAS = 4
WORKERS = 2
# Workers forget a finished answer this soon, so "long after the end" takes seconds, not 15.
KEEP_ENDED_S = 1.0
READ_TIMEOUT_S = 90.0
START_TIMEOUT_S = 240.0

MALFORMED = "llmstream_malformed_messages_total"
UNKNOWN_FRAMES = "llmstream_unknown_session_frames_total"
REPLAYS = "llmstream_worker_replays_total"
ANSWERS_KEPT = "llmstream_worker_answers_kept"
TASKS = "llmstream_worker_tasks_total"


# -- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    deployment: Deployment
    balancer: Balancer

    @property
    def url(self) -> str:
        return self.balancer.url

    def api_named(self, name: str) -> Service:
        (found,) = [api for api in self.deployment.apis if self.balancer.server_name(api) == name]
        return found


def scale_out(deployment: Deployment, directory: Path, **worker_env: str) -> Stack:
    """Four API replicas and two workers of ``deployment``, and the balancer in front."""
    for _ in range(REPLICAS):
        deployment.api()
    for _ in range(WORKERS):
        deployment.worker(**worker_env)
    # Six Python processes start at once on a shared machine: give them longer than one.
    starting = [s for s in (*deployment.workers, *deployment.apis) if s.proc is None]
    for service in starting:
        service.start()
    for service in starting:
        service.wait_ready(timeout=START_TIMEOUT_S)
    return Stack(deployment, Balancer(deployment.apis, directory / "haproxy").start())


@pytest.fixture(scope="module")
def shared(module_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = scale_out(
        module_deployment, tmp_path_factory.mktemp("scale-out"), KEEP_ENDED_S=str(KEEP_ENDED_S)
    )
    try:
        yield stack
    finally:
        stack.balancer.stop()


@pytest.fixture
def own_stack(make_deployment: Callable[[], Deployment], tmp_path: Path) -> Iterator[Stack]:
    """A stack for one test that kills a process."""
    stack = scale_out(make_deployment(), tmp_path, SHUTDOWN_GRACE_S="1", LLM_MAX_RETRIES="0")
    try:
        yield stack
    finally:
        stack.balancer.stop()


# -- clients -----------------------------------------------------------------------------------


def served_by(headers: httpx.Headers) -> str:
    name = headers.get(SERVED_BY)
    assert name, f"the balancer did not say who served the request: {dict(headers)}"
    return name


@dataclass(frozen=True, slots=True)
class Accepted:
    session_id: str
    ask: Prompt
    served_by: str


async def post(
    client: httpx.AsyncClient, url: str, ask: Prompt, *, direct: bool = False, **extra: str
) -> Accepted:
    """Queue ``ask`` through the balancer (or ``direct``ly on one replica's own URL)."""
    response = await client.post(f"{url}/chat/async", json={"message": ask.text, **extra})
    assert response.status_code == 200, response.text
    where = "direct" if direct else served_by(response.headers)
    return Accepted(response.json()["session_id"], ask, where)


@dataclass
class Reading:
    """A reader in the background that keeps what arrived even if its connection breaks."""

    accepted: Accepted
    items: list[Event | Comment] = field(default_factory=list)
    task: asyncio.Task[Transcript] | None = None
    served_by: str | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def chunks(self) -> int:
        return sum(1 for item in self.items if isinstance(item, Event) and item.kind == "chunk")

    @property
    def last_id(self) -> int:
        ids = [item.id for item in self.items if isinstance(item, Event) and item.id is not None]
        return ids[-1] if ids else 0


def start_reading(
    client: httpx.AsyncClient, url: str, accepted: Accepted, *, last_event_id: int | None = None
) -> Reading:
    """``read_stream`` in the background, that also tells who serves it as soon as it is known."""
    reading = Reading(accepted)

    async def run() -> Transcript:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        stream = client.stream("GET", f"{url}/stream/{accepted.session_id}", headers=headers)
        async with asyncio.timeout(READ_TIMEOUT_S), stream as response:
            transcript = Transcript(response.status_code, response.headers)
            reading.served_by = response.headers.get(SERVED_BY)
            reading.opened.set()
            if response.status_code != 200:
                transcript.body = await response.aread()
                return transcript
            async with contextlib.aclosing(parse(response.aiter_lines())) as items:
                async for item in items:
                    if transcript.finished:
                        if isinstance(item, Event):
                            raise AssertionError(f"event after the final one: {item!r}")
                        continue
                    transcript.items.append(item)
                    reading.items.append(item)
            transcript.ended_by_server = True
            return transcript

    reading.task = asyncio.create_task(run())
    return reading


async def until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Wait (polling every 50 ms) until ``condition`` holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.05)


async def under_way(readings: list[Reading], *, count: int, timeout: float = 45.0) -> None:
    """Wait until ``count`` readers have a tenth of their answer and none has finished.

    Positions, not chunk counts: on a busy machine a replica may send many flushes as one chunk.
    """

    def progressed(reading: Reading) -> bool:
        return reading.last_id >= len(reading.accepted.ask.expected) // 10

    deadline = time.monotonic() + timeout
    while sum(progressed(r) for r in readings) < count:
        finished = [r for r in readings if r.task and r.task.done()]
        assert not finished, (
            f"{len(finished)} answers ended before the fault could be injected; make them slower"
        )
        assert time.monotonic() < deadline, (
            f"only {sum(progressed(r) for r in readings)} of {len(readings)} answers under way "
            f"within {timeout:g}s"
        )
        await asyncio.sleep(0.05)


async def total(client: httpx.AsyncClient, services: list[Service], name: str, **labels: str) -> float:
    scrapes = await asyncio.gather(*(scrape(client, s.base_url + "/metrics") for s in services))
    return sum(samples.value(name, **labels) for samples in scrapes)


# -- 1. many sessions, spread ------------------------------------------------------------------


async def test_many_concurrent_sessions_through_the_balancer_are_exact(
    client: httpx.AsyncClient, shared: Stack
) -> None:
    sessions, burst = 100, 25
    asks = [prompt(f"spread-{i}", tokens=40, tps=40) for i in range(sessions)]
    accepted: list[Accepted] = []
    for start in range(0, sessions, burst):  # each burst: 25 POSTs in the same instant
        accepted += await asyncio.gather(
            *(post(client, shared.url, ask) for ask in asks[start : start + burst])
        )
    # Round-robin in POST order would send each GET to its POST's replica: read in another order.
    order = list(range(sessions))
    random.Random(20261201).shuffle(order)
    readings = {i: start_reading(client, shared.url, accepted[i]) for i in order}
    transcripts = {i: await readings[i].task for i in order}  # type: ignore[misc]

    for i in range(sessions):
        assert_complete(transcripts[i], asks[i].expected)
    names = shared.balancer.server_names
    posts = Counter(a.served_by for a in accepted)
    gets = Counter(served_by(t.headers) for t in transcripts.values())
    assert set(posts) == set(names), f"POSTs were not spread over every replica: {posts}"
    assert set(gets) <= set(names), gets
    assert all(gets[name] >= sessions // 10 for name in names), f"GETs not spread: {gets}"
    elsewhere = sum(served_by(transcripts[i].headers) != accepted[i].served_by for i in range(sessions))
    assert elsewhere >= sessions // 2, (
        f"only {elsewhere} of {sessions} streams were read on another replica than their POST"
    )


# -- 2. early and late readers -----------------------------------------------------------------


async def test_readers_before_the_post_on_other_replicas(
    client: httpx.AsyncClient, shared: Stack
) -> None:
    for round_ in range(3):
        ask = prompt(f"early-{round_}", tokens=30, tps=60)
        chosen = session_id("early")
        planned = Accepted(chosen, ask, "")
        readers = [start_reading(client, shared.url, planned) for _ in range(REPLICAS)]
        await asyncio.wait_for(asyncio.gather(*(r.opened.wait() for r in readers)), 20)
        assert not any(isinstance(i, Event) for r in readers for i in r.items), "early events"

        accepted = await post(client, shared.url, ask, session_id=chosen)

        transcripts = [await r.task for r in readers]  # type: ignore[misc]
        for transcript in transcripts:
            assert_complete(transcript, ask.expected)
        servers = {served_by(t.headers) for t in transcripts}
        assert servers - {accepted.served_by}, (
            f"every early reader was on the POST's replica {accepted.served_by}: {servers}"
        )


async def test_a_reader_long_after_the_end_on_a_replica_that_never_saw_it(
    client: httpx.AsyncClient, shared: Stack
) -> None:
    ask = prompt("late", tokens=40, tps=200)
    accepted = await post(client, shared.url, ask)
    first = await read_stream(client, f"{shared.url}/stream/{accepted.session_id}")
    assert_complete(first, ask.expected)
    saw = {accepted.served_by, served_by(first.headers)}
    # Long after the end: the workers have forgotten the answer (KEEP_ENDED_S, pruned by their
    # watchdog), so only the history can tell a replica that never saw the session.
    async def forgotten() -> bool:
        return await total(client, shared.deployment.workers, ANSWERS_KEPT) == 0

    await eventually(forgotten, what="every ended answer forgotten (llmstream_worker_answers_kept 0)")
    replays = await total(client, shared.deployment.workers, REPLAYS)

    middle = len(ask.expected) // 2
    fresh: list[str] = []
    for _ in range(3 * REPLICAS):  # round-robin reaches every replica within a few requests
        if saw >= set(shared.balancer.server_names):
            break
        whole = await read_stream(client, f"{shared.url}/stream/{accepted.session_id}")
        assert_complete(whole, ask.expected)
        rest = await read_stream(
            client, f"{shared.url}/stream/{accepted.session_id}", last_event_id=middle
        )
        assert_complete(rest, ask.expected[middle:], start=middle)
        for name in (served_by(whole.headers), served_by(rest.headers)):
            if name not in saw:
                fresh.append(name)
                saw.add(name)
    assert fresh, "no read landed on a replica that had never seen the session"
    assert saw == set(shared.balancer.server_names), saw
    # The late readers were answered from the history, not by a worker's replay.
    assert await total(client, shared.deployment.workers, REPLAYS) == replays


# -- 3. a worker dies --------------------------------------------------------------------------


async def test_worker_sigkill_under_load_loses_nothing(
    client: httpx.AsyncClient, own_stack: Stack
) -> None:
    sessions = 40
    # 100 tokens at 10 per second: ten seconds, so the kill lands mid-answer even on a busy machine.
    asks = [prompt(f"wkill-{i}", tokens=100, tps=10) for i in range(sessions)]
    accepted = await asyncio.gather(*(post(client, own_stack.url, ask) for ask in asks))
    readings = [start_reading(client, own_stack.url, a) for a in accepted]
    workers = own_stack.deployment.workers

    await under_way(readings, count=sessions // 2)
    scrapes = await asyncio.gather(*(scrape(client, w.base_url + "/metrics") for w in workers))
    busy = [s.value(IN_PROGRESS) for s in scrapes]
    victim_index = max(range(WORKERS), key=lambda i: busy[i])
    victim = workers[victim_index]
    survivor_index = 1 - victim_index
    survivor = workers[survivor_index]
    assert busy[victim_index] >= 1, f"no generation in progress on any worker: {busy}"
    running = sum(1 for r in readings if r.task and not r.task.done())
    assert running >= sessions // 2, f"only {running} of {sessions} answers still running at the kill"
    completed_before = scrapes[survivor_index].tasks("completed")

    victim.signal(signal.SIGKILL)
    assert await victim.wait_exit(10) == -signal.SIGKILL

    transcripts = await asyncio.gather(*(r.task for r in readings if r.task))
    wrong = []
    for reading, transcript in zip(readings, transcripts, strict=True):
        try:
            assert_complete(transcript, reading.accepted.ask.expected)
        except AssertionError as exc:
            wrong.append(f"{reading.accepted.session_id}: {exc}")
    assert not wrong, f"{len(wrong)} of {sessions} answers lost or wrong:\n" + "\n".join(wrong[:5])
    # The survivor finished its own generations and the victim's, redelivered.
    await wait_for_metric(
        client, survivor.base_url + "/metrics",
        lambda s: s.tasks("completed") >= completed_before + busy[survivor_index] + 1,
        timeout=10, what="the survivor completing the redelivered tasks",
    )


# -- 4. an API replica dies --------------------------------------------------------------------


async def test_api_replica_sigkill_clients_resume_elsewhere_exactly(
    client: httpx.AsyncClient, own_stack: Stack
) -> None:
    sessions = 24
    asks = [prompt(f"akill-{i}", tokens=80, tps=10) for i in range(sessions)]
    accepted = await asyncio.gather(*(post(client, own_stack.url, ask) for ask in asks))
    order = list(range(sessions))
    random.Random(4).shuffle(order)
    readings = {i: start_reading(client, own_stack.url, accepted[i]) for i in order}
    await under_way(list(readings.values()), count=sessions)
    assert not any(r.task.done() for r in readings.values() if r.task), "answers ended before the kill"
    opened = {i: readings[i].served_by for i in order}
    assert all(opened.values()), opened
    victim_name = Counter(opened.values()).most_common(1)[0][0]
    victim = own_stack.api_named(victim_name)

    victim.signal(signal.SIGKILL)
    assert await victim.wait_exit(10) == -signal.SIGKILL

    resumed = 0
    for i in order:
        reading = readings[i]
        expected = accepted[i].ask.expected
        try:
            transcript = await reading.task  # type: ignore[misc]
        except httpx.HTTPError:
            transcript = None
        if opened[i] != victim_name:
            assert transcript is not None, f"a reader on {opened[i]} lost its stream"
            assert_complete(transcript, expected)
            continue
        if transcript is not None and transcript.finished:
            assert_complete(transcript, expected)  # it ended before the replica died
            continue
        # Interrupted: resume through the balancer where the last event left off.
        partial = Transcript(200, httpx.Headers(), list(reading.items))
        assert_positions(partial)
        last = reading.last_id
        assert partial.text == expected[:last], "the text before the kill was already wrong"
        rest = await read_stream(
            client, f"{own_stack.url}/stream/{accepted[i].session_id}", last_event_id=last,
            timeout=READ_TIMEOUT_S,
        )
        assert served_by(rest.headers) != victim_name, "the balancer sent a resume to the dead replica"
        assert_complete(rest, expected[last:], start=last)
        assert partial.text + rest.text == expected
        resumed += 1
    assert resumed >= 1, f"no reader of {victim_name} was interrupted mid-answer"


# -- 5. the broker restarts --------------------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[RestartableNode]:
    """A RabbitMQ node of this test alone: restarting it disturbs no other test."""
    node = RestartableNode()
    try:
        node.start()
    except NodeError as exc:
        pytest.fail(f"no private RabbitMQ node to restart: {exc}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@dataclass
class Probe:
    status: int
    served_by: str
    retry_after: str | None
    body: str


async def test_broker_restart_under_load_every_accepted_session_ends_explicitly(
    client: httpx.AsyncClient, restartable: RestartableNode, mock_url: str, tmp_path: Path
) -> None:
    broker = restartable.broker
    assert broker is not None
    deployment = Deployment(broker.amqp_url, mock_url, tmp_path / "deployment", broker.management_url)
    try:
        stack = scale_out(deployment, tmp_path, LLM_MAX_RETRIES="0")
        try:
            await _restart_under_load(client, stack, restartable)
        finally:
            stack.balancer.stop()
    finally:
        deployment.close()


async def _restart_under_load(
    client: httpx.AsyncClient, stack: Stack, node: RestartableNode
) -> None:
    readings: list[Reading] = []  # every accepted session: each must end, exact or with an error
    probes: list[Probe] = []
    outage = asyncio.Event()
    names = set(stack.balancer.server_names)

    async def probe(label: str) -> Probe:
        # Four-second answers: whatever rabbitmqctl's own latency, the sessions fed in the
        # seconds before the broker goes away are cut mid-answer.
        ask = prompt(label, tokens=40, tps=10)
        response = await client.post(f"{stack.url}/chat/async", json={"message": ask.text})
        result = Probe(
            response.status_code, served_by(response.headers), response.headers.get("Retry-After"),
            response.text,
        )
        probes.append(result)
        if response.status_code == 200:
            accepted = Accepted(response.json()["session_id"], ask, result.served_by)
            readings.append(start_reading(client, stack.url, accepted))
        elif response.status_code == 503:
            outage.set()
        return result

    # Load before and into the outage: new sessions keep coming until POSTs are refused.
    for i in range(8):
        await probe(f"restart-before-{i}")
    assert all(p.status == 200 for p in probes), probes
    await under_way(list(readings), count=len(readings))
    feeding: set[asyncio.Task[Probe]] = set()

    async def feed() -> None:
        # rabbitmqctl may take a while on a busy machine: keep about eight answers running,
        # not an ever-growing pile.
        i = 0
        while not outage.is_set():
            running = sum(1 for r in readings if r.task and not r.task.done())
            if running + sum(1 for t in feeding if not t.done()) < 8:
                task = asyncio.create_task(probe(f"restart-into-{i}"))
                feeding.add(task)
                i += 1
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    down = True
    try:
        await asyncio.to_thread(node.stop_app)
        running = [r for r in readings if r.task and not r.task.done()]
        feeder.cancel()
        await asyncio.gather(*feeding, return_exceptions=True)
        assert len(running) >= 3, f"only {len(running)} answers were running when the broker went away"
        # The broker is down: every replica refuses new work explicitly (four POSTs at a time,
        # round-robin, until each replica has answered 503).
        refused: set[str] = set()
        deadline = time.monotonic() + 30
        while refused != names and time.monotonic() < deadline:
            results = await asyncio.gather(*(probe("during-outage") for _ in range(len(names))))
            refused |= {r.served_by for r in results if r.status == 503}
        assert refused == names, f"while the broker was down, only {sorted(refused)} answered 503"
        await asyncio.to_thread(node.start_app)
        down = False
    finally:
        feeder.cancel()
        if down:
            await asyncio.to_thread(node.start_app)  # so that the deployment can be cleaned up

    # Back: new work is taken again within a bounded time (each replica reconnects on its own).
    deadline = time.monotonic() + 60
    while (result := await probe("after-restart")).status != 200:
        assert time.monotonic() < deadline, f"no POST accepted after the restart: {probes[-8:]}"
        await asyncio.sleep(0.2)

    for result in probes:
        assert result.status in (200, 503), result
        if result.status == 503:
            assert result.retry_after and result.retry_after.isdigit(), result
            assert json.loads(result.body)["error"] == "broker_unavailable", result

    outcomes = await asyncio.gather(*(r.task for r in readings if r.task), return_exceptions=True)
    wrong, errors = [], 0
    for reading, outcome in zip(readings, outcomes, strict=True):
        sid = reading.accepted.session_id
        if isinstance(outcome, BaseException):
            wrong.append(f"{sid}: the stream broke or never ended ({outcome!r})")
            continue
        try:
            if outcome.finished and outcome.last.kind == "error":
                assert_error_end(outcome)
                assert reading.accepted.ask.expected.startswith(outcome.text)
                errors += 1
            else:
                assert_complete(outcome, reading.accepted.ask.expected)
        except AssertionError as exc:
            wrong.append(f"{sid}: {exc}")
    assert not wrong, (
        f"{len(wrong)} of {len(readings)} accepted sessions lost or wrong "
        f"({errors} ended with an error event):\n" + "\n".join(wrong[:8])
    )


# -- 6. bad input on the live path -------------------------------------------------------------


def replica_id(api: Service) -> str:
    """The replica id the API logged when it connected to the broker."""
    found = re.findall(r"connected to the broker.*?replica=(\S+)", api.tail(400))
    assert found, f"{api.name} never logged its replica id:\n{api.tail(20)}"
    return found[-1].strip("'\"")


async def test_bad_input_on_the_live_path_never_stalls_a_replica(
    client: httpx.AsyncClient, shared: Stack
) -> None:
    target = shared.deployment.apis[0]
    target_name = shared.balancer.server_name(target)
    replica = replica_id(target)
    live_exchange = shared.deployment.names.live_exchange
    queue_name = f"{live_exchange}.{replica}"
    metrics_url = target.base_url + "/metrics"
    before = await scrape(client, metrics_url)

    # An answer in progress on the replica under attack (read from it directly, to pin it).
    slow = prompt("under-attack", tokens=60, tps=20)
    pinned = await post(client, shared.url, slow)
    victim_reader = start_reading(client, target.base_url, pinned)
    await under_way([victim_reader], count=1)

    garbage: list[bytes] = [
        b"\x00\xff not json at all",
        b"",
        b'"a JSON string"',
        b"[1, 2, 3]",
        b"{" * 10_000,
        bytes(range(256)) * 4096,  # 1 MiB of binary
    ]
    foreign = [b'{"hello": "world"}', json.dumps({"v": 99, "frames": []}).encode()]
    old = [
        json.dumps({
            "v": 1, "producer": "old",
            "events": [{"session_id": pinned.session_id, "type": "token", "content": "INJECTED"}],
        }).encode()
    ]
    no_frames = [json.dumps({"v": FRAMES_VERSION, "producer": "x", "frames": "nope"}).encode()]
    broken = [{"sid": 5}, "nope", {"sid": "s", "off": -1}]
    bad_frames = [json.dumps({"v": FRAMES_VERSION, "producer": "x", "frames": broken}).encode()]
    unknown_count = 50
    unknown = [
        json.dumps({
            "v": FRAMES_VERSION, "producer": "x",
            "frames": [{"sid": session_id("ghost"), "off": 0, "text": "boo", "started": True}],
        }).encode()
        for _ in range(unknown_count)
    ]
    rounds = 20
    connection = await aio_pika.connect(shared.deployment.broker_url)
    try:
        # The replica's own live queue exists under that name: a passive declaration finds it,
        # exclusive to the replica's connection (a missing queue would be NOT_FOUND instead).
        probe_channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelLockedResource):
            await probe_channel.declare_queue(queue_name, passive=True)
        channel = await connection.channel()
        exchange = await channel.get_exchange(live_exchange, ensure=True)
        for _ in range(rounds):
            for body in garbage + foreign + old + no_frames + bad_frames:
                await exchange.publish(aio_pika.Message(body), routing_key=replica)
        for body in unknown:
            # Half through the exchange, half straight into the queue.
            await exchange.publish(aio_pika.Message(body), routing_key=replica)
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue_name)
    finally:
        await connection.close()

    def delta(samples: Samples, name: str, **labels: str) -> float:
        return samples.value(name, **labels) - before.value(name, **labels)

    expected = {
        "malformed": rounds * (len(garbage) + len(no_frames)),
        "version": rounds * (len(foreign) + len(old)),
        "frame": rounds * len(broken),
    }
    after = await wait_for_metric(
        client, metrics_url,
        lambda s: all(delta(s, MALFORMED, source="live", reason=r) >= n for r, n in expected.items())
        and delta(s, UNKNOWN_FRAMES) >= 2 * unknown_count,
        timeout=20, what="the replica counting every bad message",
    )
    for reason, count in expected.items():
        assert delta(after, MALFORMED, source="live", reason=reason) == count, reason

    # The answer in progress went on untouched, and the replica still serves new ones.
    assert_complete(await victim_reader.task, slow.expected)  # type: ignore[misc]
    asks = [prompt(f"after-attack-{i}", tokens=20, tps=200) for i in range(2 * REPLICAS)]
    accepted = await asyncio.gather(*(post(client, shared.url, ask) for ask in asks))
    transcripts = await asyncio.gather(
        *(read_stream(client, f"{shared.url}/stream/{a.session_id}") for a in accepted)
    )
    for ask, transcript in zip(asks, transcripts, strict=True):
        assert_complete(transcript, ask.expected)
    assert target_name in {served_by(t.headers) for t in transcripts} | {a.served_by for a in accepted}
    direct = await post(client, target.base_url, prompt("direct-after-attack", tokens=10), direct=True)
    assert_complete(
        await read_stream(client, f"{target.base_url}/stream/{direct.session_id}"),
        direct.ask.expected,
    )
    health = await client.get(target.base_url + "/health/full")
    assert health.status_code == 200, health.text
    # Logged once per kind, not once per message.
    warnings = target.tail(5000).count("dropping live data this replica cannot use")
    assert 1 <= warnings <= 4, f"{warnings} warning lines for the bad messages"
