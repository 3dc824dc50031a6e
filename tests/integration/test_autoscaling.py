"""The chart's autoscaling loop, as far as it runs without a cluster.

The chart is rendered with this run's broker and queue. KEDA's side is the rendered ScaledObject
and TriggerAuthentication, read by ``support/keda.py`` exactly as the rabbitmq scaler reads the
queue (``protocol: http``, ``mode: QueueLength``: ready plus unacknowledged tasks). The HPA's
side is its replica arithmetic with the rendered bounds and behaviour. The test plays the
Deployment controller with real worker processes: it starts one to scale out, and sends SIGTERM
to one to scale in.

1. A burst: the loop scales out to ``maxReplicas`` while the burst drains.
2. A steady trickle that needs one replica: it scales in by SIGTERM, one worker at a time:
   a worker not ready yet first (as Kubernetes chooses), else the one with the most tasks in
   flight.
3. Idle: back to ``minReplicas``.

Every answer arrives whole, none stalls, nothing is dead-lettered, and every stopped worker
exits cleanly. The timeline is printed (``pytest -s``) and written next to the logs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import quote_plus

import httpx
import pytest
from deploy.manifests import helm_template
from support.brokers import Broker

from .support.deployment import Deployment, prompt
from .support.keda import Autoscaler, QueueReading, Trigger, queue_length
from .support.metrics import IN_PROGRESS, scrape
from .support.processes import Service
from .support.sse import assert_complete, read_stream

# A minute or two on an idle machine; far longer on a loaded one (slow process starts).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CONCURRENCY = 4  # WORKER_CONCURRENCY, and so the trigger's value (tasks per replica)
MIN_REPLICAS, MAX_REPLICAS = 1, 4
TOKENS, TPS = 30, 20  # burst answers: 1.5 s each
BURST = 40  # ceil(40 / 4) = 10 replicas wanted: more than maxReplicas
# The trickle: long answers, one every 1.5 s, about 4 in flight at any time: one replica's worth.
# It runs until the loop has scaled in to minReplicas, so every SIGTERM meets work in flight.
TRICKLE_TOKENS, TRICKLE_TPS, TRICKLE_EVERY_S = 60, 10, 1.5
TRICKLE_MAX_S = 300.0
# Compressed times, so that the loop runs in a test; docs/deploy.md has the chart's defaults.
POLL_S = 2
SCALE_DOWN_WINDOW_S = 6
SCALE_DOWN_PERIOD_S = 3
SHUTDOWN_GRACE_S = 20
WORKER_READY_S = 180.0  # a loaded machine starts processes slowly; start-up is not judged here
# No answer may take longer than this end to end (a stalled session fails the test). Generous:
# the machine's two cores are shared, and a loaded machine makes everything slower.
ANSWER_DEADLINE_S = 120.0
SETTLE_DEADLINE_S = 120.0
DRAINED_DEADLINE_S = 30.0

BEHAVIOR = {
    "scaleUp": {  # the chart's default
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 15},
            {"type": "Pods", "value": 4, "periodSeconds": 15},
        ],
    },
    "scaleDown": {  # the chart's shape (one pod at a time after a stable window), shorter
        "stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S,
        "selectPolicy": "Min",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": SCALE_DOWN_PERIOD_S}],
    },
}


@dataclass
class Sample:
    t: float
    messages: int
    ready: int
    unacknowledged: int
    replicas: int
    desired: int


@dataclass
class Stop:
    worker: str
    t: float
    in_flight: int
    was_ready: bool
    exit_code: int | None = None
    drained_in_s: float | None = None


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    starts: list[tuple[str, float, float | None]] = field(default_factory=list)  # name, t, ready after
    stops: list[Stop] = field(default_factory=list)
    answers: list[tuple[float, float]] = field(default_factory=list)  # posted at, took
    failed_readings: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def table(self) -> str:
        rows = ["   t(s)  messages  ready  unacked  desired  replicas"]
        rows += [
            f"{s.t:7.1f}  {s.messages:8d}  {s.ready:5d}  {s.unacknowledged:7d}  {s.desired:7d}"
            f"  {s.replicas:8d}"
            for s in self.samples
        ]
        rows += [f"start {name} at {t:.1f} s, ready after {ready}" for name, t, ready in self.starts]
        rows += [
            f"SIGTERM {s.worker} ({'ready' if s.was_ready else 'starting'}) at {s.t:.1f} s with "
            f"{s.in_flight} in flight: exit {s.exit_code} after {s.drained_in_s}"
            for s in self.stops
        ]
        rows += [f"failed reading at {failure}" for failure in self.failed_readings]
        return "\n".join(rows)


class Controller:
    """The Deployment controller's part: hold the replica count the autoscaler asks for."""

    def __init__(self, stack: Deployment, trigger: Trigger, timeline: Timeline) -> None:
        self.stack = stack
        self.trigger = trigger
        self.autoscaler = Autoscaler(trigger)
        self.timeline = timeline
        self.running: list[Service] = []
        self.ready: set[Service] = set()
        self.background: list[asyncio.Task[None]] = []

    def add_worker(self) -> Service:
        return self.stack.worker(
            WORKER_CONCURRENCY=str(CONCURRENCY), SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S)
        )

    async def start_one(self) -> None:
        service = self.add_worker().start()
        self.running.append(service)
        began = time.monotonic()
        entry = [service.name, round(self.timeline.now(), 2), None]
        self.timeline.starts.append(entry)  # type: ignore[arg-type]

        async def ready() -> None:
            await service.wait_ready_async(WORKER_READY_S)
            entry[2] = round(time.monotonic() - began, 2)
            self.ready.add(service)

        self.background.append(asyncio.create_task(ready()))

    async def stop_one(self, http: httpx.AsyncClient) -> None:
        """SIGTERM to one worker. As Kubernetes does, one that is not ready yet goes first;
        among ready ones, the one with the most tasks in flight: the case that must drain."""
        starting = [service for service in self.running if service not in self.ready]
        if starting:
            in_flight, victim = 0.0, starting[-1]
        else:
            loads = []
            for service in self.running:
                try:
                    samples = await scrape(http, f"{service.base_url}/metrics")
                    loads.append((samples.value(IN_PROGRESS), service))
                except httpx.HTTPError:
                    loads.append((0.0, service))
            in_flight, victim = max(loads, key=lambda pair: pair[0])
        self.running.remove(victim)
        stop = Stop(victim.name, self.timeline.now(), int(in_flight), victim in self.ready)
        self.timeline.stops.append(stop)
        victim.terminate()

        async def drained() -> None:
            stop.exit_code = await victim.wait_exit(SHUTDOWN_GRACE_S + 15)
            stop.drained_in_s = round(self.timeline.now() - stop.t, 2)

        self.background.append(asyncio.create_task(drained()))

    async def tick(self, http: httpx.AsyncClient) -> QueueReading:
        reading = await queue_length(self.trigger, http)
        now = self.timeline.now()
        current = len(self.running)
        desired = self.autoscaler.desired(reading.messages, current, now)
        self.timeline.samples.append(
            Sample(round(now, 2), reading.messages, reading.ready, reading.unacknowledged, current, desired)
        )
        for _ in range(desired - current):
            await self.start_one()
        for _ in range(current - desired):
            await self.stop_one(http)
        self.autoscaler.record(now, desired - current)
        return reading

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(http)
            except httpx.HTTPError as exc:
                # KEDA logs a failed reading and the HPA keeps its count until the next one.
                self.timeline.failed_readings.append(f"{self.timeline.now():.1f} s: {exc!r}")
            try:
                await asyncio.wait_for(stop.wait(), self.trigger.polling_interval)
            except TimeoutError:
                pass


def render(broker: Broker, stack: Deployment) -> Trigger:
    assert broker.management_url
    objects = helm_template(
        "--set", f"rabbitmq.url={broker.amqp_url}",
        "--set", f"rabbitmq.managementUrl={broker.management_url}",
        "--set", f"config.taskQueue={stack.names.task_queue}",
        "--set", "llm.apiKey=test",
        "--set", f"worker.concurrency={CONCURRENCY}",
        "--set", f"worker.keda.minReplicas={MIN_REPLICAS}",
        "--set", f"worker.keda.maxReplicas={MAX_REPLICAS}",
        "--set", f"worker.keda.pollingInterval={POLL_S}",
        "--set-json", f"worker.keda.behavior={json.dumps(BEHAVIOR)}",
    )
    return Trigger.from_manifests(list(objects))


async def test_workers_scale_out_under_a_burst_and_in_by_sigterm_without_losing_a_session(
    make_deployment, broker: Broker
) -> None:
    stack: Deployment = make_deployment()
    trigger = render(broker, stack)

    # What the chart tells KEDA.
    assert (trigger.protocol, trigger.mode) == ("http", "QueueLength")
    assert trigger.queue_name == stack.names.task_queue
    assert trigger.vhost_name == "/"
    assert trigger.value == CONCURRENCY  # tasksPerReplica defaults to worker.concurrency
    assert (trigger.min_replicas, trigger.max_replicas) == (MIN_REPLICAS, MAX_REPLICAS)
    management = httpx.URL(broker.management_url or "")
    assert trigger.host == broker.management_url
    assert trigger.queue_url() == (
        f"http://{management.username}:{management.password}@{management.host}:{management.port}"
        f"/api/queues/%2F/{quote_plus(stack.names.task_queue)}"
    )

    api_service = stack.api().start()
    api = api_service.base_url
    timeline = Timeline()
    controller = Controller(stack, trigger, timeline)
    for _ in range(MIN_REPLICAS):
        await controller.start_one()
    await api_service.wait_ready_async(WORKER_READY_S)
    await asyncio.gather(*controller.background)

    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits, trust_env=False) as http:
        timeline.started = time.monotonic()
        stop = asyncio.Event()
        loop = asyncio.create_task(controller.run(http, stop))

        async def session(label: str, tokens: int = TOKENS, tps: int = TPS) -> None:
            ask = prompt(label, tokens=tokens, tps=tps)
            posted = timeline.now()
            queued = await http.post(f"{api}/chat/async", json={"message": ask.text})
            assert queued.status_code == 200, queued.text
            transcript = await read_stream(
                http, f"{api}{queued.json()['stream_url']}", timeout=ANSWER_DEADLINE_S
            )
            assert_complete(transcript, ask.expected)
            timeline.answers.append((round(posted, 2), round(timeline.now() - posted, 2)))

        trickled = 0

        async def trickle() -> list[None]:
            nonlocal trickled
            sessions = []
            deadline = time.monotonic() + TRICKLE_MAX_S
            while not timeline.stops or len(controller.running) > MIN_REPLICAS:
                assert time.monotonic() < deadline, f"never scaled in:\n{timeline.table()}"
                sessions.append(
                    asyncio.create_task(
                        session(f"trickle {trickled}", tokens=TRICKLE_TOKENS, tps=TRICKLE_TPS)
                    )
                )
                trickled += 1
                await asyncio.sleep(TRICKLE_EVERY_S)
            return await asyncio.gather(*sessions)

        try:
            await asyncio.gather(*(session(f"burst {i}") for i in range(BURST)), trickle())
            # Idle: wait for the loop to come back to minReplicas and the stopped workers to exit.
            deadline = time.monotonic() + SETTLE_DEADLINE_S
            while len(controller.running) > MIN_REPLICAS or any(
                s.exit_code is None for s in timeline.stops
            ):
                assert time.monotonic() < deadline, f"never settled:\n{timeline.table()}"
                await asyncio.sleep(0.5)
            # The management API's figures lag by a statistics round (5 s by default).
            deadline = time.monotonic() + DRAINED_DEADLINE_S
            while True:
                try:
                    final = await queue_length(trigger, http)
                    if final.messages == 0:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"queue never empty:\n{timeline.table()}"
                await asyncio.sleep(1)
        finally:
            stop.set()
            await loop
            await asyncio.gather(*controller.background, return_exceptions=True)

    report = timeline.table()
    print(f"\nautoscaling timeline\n{report}")
    (stack.log_dir / "autoscaling.txt").parent.mkdir(parents=True, exist_ok=True)
    (stack.log_dir / "autoscaling.json").write_text(json.dumps(asdict(timeline), indent=1))
    (stack.log_dir / "autoscaling.txt").write_text(report)

    # KEDA's number is the queue's `messages`: ready plus unacknowledged.
    for sample in timeline.samples:
        assert sample.messages == sample.ready + sample.unacknowledged, sample
    # Scale-out: the burst asked for more than maxReplicas, and got maxReplicas.
    burst_wanted = math.ceil(max(s.messages for s in timeline.samples) / CONCURRENCY)
    assert burst_wanted > MAX_REPLICAS, report
    assert max(s.desired for s in timeline.samples) == MAX_REPLICAS, report
    assert max(s.replicas for s in timeline.samples) == MAX_REPLICAS, report
    # Scale-in by SIGTERM (the loop may also scale out again on the way: stale figures and a
    # short stabilization window), at least once with tasks in flight on the stopped worker.
    assert len(timeline.stops) == len(timeline.starts) - MIN_REPLICAS, report
    assert any(s.in_flight > 0 for s in timeline.stops), report
    # A worker stopped once ready drains and exits 0 (one stopped while starting had no task).
    assert all(s.exit_code == 0 for s in timeline.stops if s.was_ready), report
    assert all(s.exit_code is not None for s in timeline.stops), report
    # Back at minReplicas, nothing left in the queue, nothing dead-lettered, every answer whole.
    assert len(controller.running) == MIN_REPLICAS
    assert final.messages == 0, report
    assert len(timeline.answers) == BURST + trickled
    async with broker.management(timeout=10) as mgmt:
        dead = (await mgmt.get(f"/api/queues/%2F/{quote_plus(stack.names.dead_letter_queue)}")).json()
    assert dead.get("messages", 0) == 0, dead
