"""Cluster intake: where task intake tops out with one quorum-queue leader on a 3-node cluster.

    uv run python bench/run.py --only cluster-intake           # about 4 minutes
    uv run python bench/run.py --only cluster-intake --quick   # burst of 400, 4 s publishes

Two brokers, one after the other: a private single node and the three-node host cluster of
``tests/support/rabbitmq_cluster.py`` (HAProxy in TCP mode in front of the nodes). Every VM
runs with the cluster's flags (``+sbwt none``), so clustering is the only difference. On each:

- **publish**: the broker alone. ``--intake-channels`` connections (through the balancer) of
  one channel each, with publisher confirms and ``--intake-in-flight`` publishes awaiting
  their confirm per channel, persistent messages of ``--intake-bytes``, for
  ``--intake-seconds`` after 1 s not counted. Into 1 quorum queue (3 members), and on the
  cluster also into 3 quorum queues whose leaders are on 3 different nodes (declared
  ``balanced``; where the broker put two on one node, declared again through each node's own
  URL with ``client-local``), each channel sending its messages to the 3 in turn; the two
  alternate ``--intake-repeat`` times.
- **live**: the path of live frames: unconfirmed transient messages to a direct exchange,
  routed to one exclusive classic queue read with ``no_ack`` by another connection (a worker
  publishing to an API replica), at most ``LIVE_WINDOW`` sent and not yet received.
- **the system**: the stack as ``bench/run.py`` starts it (mock LLM, 1 API process,
  ``--workers`` workers) with ``RABBIT_MQ`` the node, or the balancer; warmed up, then
  ``run.Bench``'s async closed loop (streams read as they are produced) and its burst:
  ``--burst`` POSTs to ``/chat/async`` by ``--burst-concurrency`` clients, then every stream
  read to its end. The workers' ``/metrics`` give the live messages and frames they sent, the
  API's its history lookups. On the cluster, the same again on a stack of its own with
  ``TASK_SHARDS=--intake-shards`` (3): the tasks spread over that many quorum queues.

The CPU of each ``beam.smp`` (psutil, its process tree), of the balancer, of this process (the
client) and of the rest of the machine is read at the start and the end of each measured
window; during the burst, every ``SAMPLE_S``, so that the POSTs' share can be read. All of it
shares the machine's cores. Results: ``bench/results/cluster-intake.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import psutil
import uvloop
from aio_pika.abc import AbstractChannel, AbstractConnection, DeliveryMode

import loadgen
import report
from scaleout import parse_metrics
from stack import CpuMeter, Stack, broker_meter, broker_names, cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
WARMUP_S = 1.0
CONFIRM_TIMEOUT_S = 30.0
LIVE_WINDOW = 2000
LIVE_PUBLISHERS = 4
LIVE_BYTES = 400
SAMPLE_S = 0.1
IDLE_S = 3.0
STREAM_USERS, STREAM_REQUESTS_PER_USER = 50, 6
BURST_READ_TIMEOUT_S = 60.0  # a stream not read to its end by then counts as timed out
PERSISTENT = DeliveryMode.PERSISTENT
QUORUM = {"x-queue-type": "quorum", "x-quorum-initial-group-size": 3}
API_METRICS = {
    "lookups": "llmstream_history_lookup_duration_seconds_count",
    "failed": 'llmstream_history_failures_total{kind="lookup"}',
}
STALL_LOG_LINE = b"the broker node stopped answering"
WORKER_METRICS = {
    "messages": "llmstream_worker_event_batches_total",  # live messages + one transcript per answer
    "frames": "llmstream_worker_events_published_total",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster intake (--only cluster-intake; see bench/README.md)")
    group.add_argument(
        "--intake-seconds", type=float, help="measured seconds of each publish (default 10, quick 4)"
    )
    group.add_argument(
        "--intake-channels", type=int, default=8, help="publisher connections, one channel each"
    )
    group.add_argument("--intake-in-flight", type=int, default=50, help="unconfirmed publishes per channel")
    group.add_argument("--intake-bytes", type=int, default=600, help="body of a published message (a task)")
    group.add_argument(
        "--intake-shards", type=int, default=3,
        help="on the cluster, the stack once more with TASK_SHARDS set to this (1 skips it)",
    )
    group.add_argument(
        "--intake-repeat", type=int, default=2,
        help="how many times the cluster's 1-queue and 3-queue publishes alternate",
    )


# -- the brokers -------------------------------------------------------------------------------


class Broker:
    """What a part needs of a broker: where to connect, the nodes' VMs, who leads a queue."""

    def __init__(
        self, label: str, url: str, node_urls: list[str], vm_pids: list[int], cluster: Any = None
    ) -> None:
        self.label = label
        self.url = url
        self.node_urls = node_urls
        self.names = [f"node{i}" for i in range(1, len(vm_pids) + 1)]
        self.vm_pids = vm_pids
        self.cluster = cluster

    def meters(self) -> dict[str, CpuMeter]:
        """Each node's VM, and the balancer (HAProxy) in front of a cluster."""
        meters = {name: CpuMeter.of_pids([pid]) for name, pid in zip(self.names, self.vm_pids, strict=True)}
        if self.cluster is not None:
            meters["balancer"] = broker_meter(self.url)  # the process on the balanced URL's port
        return meters

    def leader_of(self, queue: str) -> str | None:
        if self.cluster is None:
            return self.names[0]
        leader = self.cluster.leader_of(queue)
        return None if leader is None else self.names[self.cluster.nodes.index(leader)]


def _support() -> Any:
    """``tests/support`` (the private nodes and the cluster), a package beside the bench."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.append(str(ROOT / "tests"))
    import support.rabbitmq_cluster as cluster_module

    return cluster_module


@contextlib.contextmanager
def single_node() -> Iterator[Broker]:
    support = _support()
    node = support.RabbitMQNode(erl_args=support.ERL_ARGS)
    broker = node.start()
    try:
        label = f"single node (RabbitMQ {broker.version})"
        yield Broker(label, broker.amqp_url, [broker.amqp_url], [node.vm_pid()])
    finally:
        node.stop()


@contextlib.contextmanager
def three_nodes() -> Iterator[Broker]:
    with _support().host_cluster() as cluster:
        pids = [cluster.member(node).vm_pid() for node in cluster.nodes]
        urls = [node.amqp_url for node in cluster.nodes]
        label = f"3-node cluster (RabbitMQ {cluster.version}), through the balancer"
        yield Broker(label, cluster.balanced_url, urls, pids, cluster)


# -- measuring -------------------------------------------------------------------------------


class Window:
    """CPU of the nodes, of this process and of the machine over one measured window."""

    def __init__(self, broker: Broker) -> None:
        self.meters = {**broker.meters(), "client": CpuMeter([psutil.Process()], descendants=False)}
        self.nodes = broker.names
        self.before: dict[str, float] = {}
        self.began = 0.0

    def open(self) -> None:
        self.before, self.began = cpu_seconds(self.meters), time.perf_counter()

    def close(self) -> dict[str, Any]:
        after, wall = cpu_seconds(self.meters), time.perf_counter() - self.began
        used = {k: after[k] - self.before[k] for k in after}
        host = used.pop("host")
        cores = {k: round(v / wall, 3) for k, v in used.items()}
        return {
            "wall_s": round(wall, 3),
            "cores": cores,
            "broker_cores": round(sum(cores[n] for n in self.nodes), 3),
            "background_cores": round(max(0.0, host - sum(used.values())) / wall, 2),
            "cpu_s": {k: round(v, 3) for k, v in used.items()},
        }


async def _timed_window(window: Window, start: float, end: float, out: dict[str, Any]) -> None:
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    window.open()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    out.update(window.close())


async def _connect(url: str, name: str) -> AbstractConnection:
    separator = "&" if "?" in url else "?"
    return await aio_pika.connect(f"{url}{separator}name={name}", timeout=30)


async def declare_queues(broker: Broker, names: list[str]) -> tuple[list[str | None], str]:
    """Quorum queues, leaders on distinct nodes where there are enough nodes; returns the leaders
    and how they were placed."""
    distinct = min(len(names), len(broker.names))

    async def declare(url: str, queues: list[str], locator: str) -> None:
        async with await _connect(url, "bench-intake-declare") as connection:
            channel = await connection.channel()
            for name in queues:
                arguments = {**QUORUM, "x-queue-leader-locator": locator}
                await channel.declare_queue(name, durable=True, arguments=arguments)

    await declare(broker.url, names, "balanced")
    leaders = [broker.leader_of(name) for name in names]
    if len({leader for leader in leaders if leader}) >= distinct:
        return leaders, "balanced"
    await delete_queues(broker.url, names)
    for name, url in zip(names, broker.node_urls * len(names), strict=False):
        await declare(url, [name], "client-local")
    return [broker.leader_of(name) for name in names], "client-local, each through its node's URL"


async def delete_queues(url: str, names: list[str]) -> None:
    async with await _connect(url, "bench-intake-delete") as connection:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)


async def publish(broker: Broker, queues: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Confirmed persistent publishes into ``queues`` for ``args.intake_seconds``."""
    body = b"x" * args.intake_bytes
    connections = [await _connect(broker.url, f"bench-intake-{i}") for i in range(args.intake_channels)]
    window = Window(broker)
    latencies: list[float] = []
    confirmed = failed = 0
    start = time.perf_counter() + WARMUP_S
    end = start + args.intake_seconds

    async def slot(channel: AbstractChannel, turn: Iterator[int]) -> None:
        nonlocal confirmed, failed
        exchange = channel.default_exchange
        while (sent := time.perf_counter()) < end:
            message = aio_pika.Message(body, content_type="application/json", delivery_mode=PERSISTENT)
            queue = queues[next(turn) % len(queues)]
            try:
                await exchange.publish(message, routing_key=queue, mandatory=True, timeout=CONFIRM_TIMEOUT_S)
            except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.DeliveryError, TimeoutError):
                failed += 1
                continue
            done = time.perf_counter()
            if start <= done <= end:
                confirmed += 1
                latencies.append(done - sent)

    try:
        channels = [await c.channel(publisher_confirms=True) for c in connections]
        turns = [itertools.count(i) for i in range(len(channels))]
        measured: dict[str, Any] = {}
        await asyncio.gather(
            _timed_window(window, start, end, measured),
            *(slot(ch, turns[i]) for i, ch in enumerate(channels) for _ in range(args.intake_in_flight)),
        )
    finally:
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close()
    rate = confirmed / measured["wall_s"]
    return {
        "confirmed": confirmed,
        "failed": failed,
        "msgs_per_s": round(rate, 1),
        "confirm_ms": report.distribution_ms(latencies),
        "broker_us_per_msg": round(measured["broker_cores"] * 1e6 / rate, 1) if rate else None,
        **measured,
    }


async def live(broker: Broker, seconds: float, run_id: str) -> dict[str, Any]:
    """Unconfirmed transient messages through a direct exchange to one no-ack consumer."""
    exchange_name, route = f"bench.{run_id}.intake-live", "replica-1"
    consumer = await _connect(broker.url, "bench-live-consumer")
    publishers = [await _connect(broker.url, f"bench-live-{i}") for i in range(LIVE_PUBLISHERS)]
    window = Window(broker)
    latencies: list[float] = []
    counts = {"sent": 0, "received": 0, "in_window": 0}
    room = asyncio.Event()
    room.set()
    start = time.perf_counter() + WARMUP_S
    end = start + seconds

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        counts["received"] += 1
        now = time.perf_counter()
        if start <= now <= end:
            counts["in_window"] += 1
            latencies.append(now - float(message.body[:20]))
        if counts["sent"] - counts["received"] < LIVE_WINDOW:
            room.set()

    async def publisher(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange(exchange_name)
        while time.perf_counter() < end:
            if counts["sent"] - counts["received"] >= LIVE_WINDOW:
                room.clear()
                async with asyncio.timeout(CONFIRM_TIMEOUT_S):  # the consumer gets nothing more: fail
                    await room.wait()
                continue
            body = f"{time.perf_counter():<20.6f}".encode() + b"x" * (LIVE_BYTES - 20)
            counts["sent"] += 1
            await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key=route)

    try:
        channel = await consumer.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.DIRECT, auto_delete=True
        )
        queue = await channel.declare_queue(
            "", durable=False, exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        await queue.bind(exchange, routing_key=route)
        await queue.consume(on_message, no_ack=True)
        channels = [await p.channel(publisher_confirms=False) for p in publishers]
        measured: dict[str, Any] = {}
        await asyncio.gather(_timed_window(window, start, end, measured), *(publisher(ch) for ch in channels))
    finally:
        for connection in [*publishers, consumer]:
            with contextlib.suppress(Exception):
                await connection.close()
    rate = counts["in_window"] / measured["wall_s"]
    return {
        "received": counts["in_window"],
        "msgs_per_s": round(rate, 1),
        "latency_ms": report.distribution_ms(latencies),
        "broker_us_per_msg": round(measured["broker_cores"] * 1e6 / rate, 1) if rate else None,
        **measured,
    }


async def scrape(session: aiohttp.ClientSession, bench: Any) -> dict[str, float]:
    """The workers' live messages and frames, and the API's history lookups, so far."""
    total = dict.fromkeys([*WORKER_METRICS, *API_METRICS], 0.0)
    urls = [(f"{bench.api_url}/metrics", API_METRICS)] + [
        (f"http://127.0.0.1:{s.env['METRICS_PORT']}/metrics", WORKER_METRICS)
        for s in bench.main_services
        if "METRICS_PORT" in s.env
    ]
    for url, metrics in urls:
        async with session.get(url) as r:
            samples = parse_metrics(await r.text())
        for key, metric in metrics.items():
            total[key] += samples.get(metric, 0.0)
    return total


def _log_size(service: Any) -> int:
    with contextlib.suppress(OSError):
        return int(service.log.stat().st_size)
    return 0


def _stalls_since(service: Any, offset: int) -> int:
    """How often the process left its broker connection as stalled, in its log after ``offset``."""
    with contextlib.suppress(OSError), service.log.open("rb") as log:
        log.seek(offset)
        return log.read().count(STALL_LOG_LINE)
    return 0


class Sampler:
    """CPU seconds of some meters every ``SAMPLE_S``, to read the cores of a phase afterwards."""

    def __init__(self, meters: dict[str, CpuMeter]) -> None:
        self.meters = meters
        self.samples: list[tuple[float, dict[str, float]]] = []

    async def run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), cpu_seconds(self.meters)))
            await asyncio.sleep(SAMPLE_S)

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores used between the samples nearest to ``start`` and ``end``."""
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        wall = last[0] - first[0]
        used = {k: last[1][k] - first[1][k] for k in last[1] if k != "host"}
        return {k: round(v / wall, 3) for k, v in used.items()} if wall > 0 else {}


def _live_counts(before: dict[str, float], after: dict[str, float], answers: int) -> dict[str, Any]:
    """What the workers sent to the API between two scrapes of their ``/metrics``."""
    frames = after["frames"] - before["frames"]
    messages = after["messages"] - before["messages"] - answers  # one transcript per answer
    return {
        "messages": int(messages),
        "frames": int(frames),
        "frames_per_answer": round(frames / answers, 1) if answers else None,
        "frames_per_message": round(frames / messages, 2) if messages > 0 else None,
    }


def _per_answer_ms(
    cpu_s: dict[str, float], names: list[str], answers: int, idle: dict[str, float], wall_s: float
) -> dict[str, float] | None:
    """Broker CPU ms per answer on each node, in all, and in all less what the nodes spend idle."""
    if not answers:
        return None
    per = {n: round(cpu_s.get(n, 0.0) * 1000 / answers, 3) for n in names}
    quiet = sum(idle.get(n, 0.0) for n in names) * wall_s * 1000 / answers
    return {**per, "broker": round(sum(per.values()), 3), "less_idle": round(sum(per.values()) - quiet, 3)}


async def idle(broker: Broker, seconds: float = IDLE_S) -> dict[str, float]:
    """Cores each node uses with no client at all (its timers, statistics, the other nodes)."""
    window = Window(broker)
    window.open()
    await asyncio.sleep(seconds)
    measured = window.close()
    return {n: measured["cores"][n] for n in broker.names}


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in this process's environment, which the stack's processes inherit."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def system(
    broker: Broker, args: argparse.Namespace, stack: Stack, make_bench: Callable[..., Any],
    quiet: dict[str, float], shards: int = 1,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """On a stack whose ``RABBIT_MQ`` is ``broker.url`` (and ``TASK_SHARDS`` is ``shards``):
    ``run.Bench``'s async closed loop (``STREAM_USERS`` users, ``STREAM_REQUESTS_PER_USER``
    each: streams read as they are produced), then its burst."""
    bench_args = argparse.Namespace(**vars(args))
    bench_args.amqp_url, bench_args.modes = broker.url, ["async"]
    bench_args.concurrency = [max(args.burst_concurrency, STREAM_USERS)]
    bench_args.requests_per_user = STREAM_REQUESTS_PER_USER
    bench_args.scenario_timeout = BURST_READ_TIMEOUT_S
    bench = make_bench(bench_args, stack)
    try:
        with _environment({"TASK_SHARDS": str(shards)}):
            await bench.start()
        bench.meters.pop("broker", None)  # behind the balancer, that would be HAProxy
        bench.meters.update(broker.meters())
        sampler = Sampler({k: m for k, m in bench.meters.items() if k != "mock"})
        api = bench.main_services[0]
        async with loadgen.new_session(args.burst + 100) as session:
            await bench.warm_up(session)
            bench.check_alive("the warm-up")
            before, log_at = await scrape(session, bench), _log_size(api)
            streams: dict[str, Any] = await bench.scenario(session, "async", STREAM_USERS)
            between, burst_log_at = await scrape(session, bench), _log_size(api)
            bench.check_alive(streams["name"])
            sampling = asyncio.create_task(sampler.run())
            began = time.perf_counter()
            try:
                result: dict[str, Any] = await bench.burst(session)
            finally:
                sampling.cancel()
            after = await scrape(session, bench)
        bench.check_alive("the burst")
        streams["api_stalls"] = _stalls_since(api, log_at) - _stalls_since(api, burst_log_at)
        result["api_stalls"] = _stalls_since(api, burst_log_at)
    finally:
        stack.stop()
    for part, (first, last) in ((streams, (before, between)), (result, (between, after))):
        part["history_lookups"] = {k: int(last[k] - first[k]) for k in API_METRICS}
    streams["live"] = _live_counts(before, between, streams["completed"])
    streams["broker_ms_per_answer"] = _per_answer_ms(
        streams["cpu_s"], broker.names, streams["correct"], quiet, streams["wall_s"]
    )
    result["live"] = _live_counts(between, after, result["completed"])
    result["post_phase_cores"] = sampler.cores(began, began + result["post_wall_s"])
    result["read_timeout_s"] = BURST_READ_TIMEOUT_S
    task_queue = broker_names(stack.run_id)["TASK_QUEUE"]
    queues = [task_queue, *(f"{task_queue}.s{i}" for i in range(1, shards))]  # mqcommon.pools' names
    for part in (streams, result):
        part["task_shards"] = shards
        part["task_queue_leaders"] = [broker.leader_of(queue) for queue in queues]
    return streams, result


# -- the part ---------------------------------------------------------------------------------


async def run_part(args: argparse.Namespace, stack: Stack, make_bench: Callable[..., Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"idle": [], "streams": [], "burst": [], "publish": [], "live": [], "version": None}

    def note(kind: str, label: str, r: dict[str, Any]) -> None:
        cores = " ".join(f"{n} {r['cores'][n]}" for n in r["cores"] if n.startswith("node"))
        client = r["cores"]["client"]
        print(f"{kind} {label}: {r['msgs_per_s']} msg/s, beam cores {cores}, client {client}", flush=True)

    for start, key in ((single_node, "single-node"), (three_nodes, "cluster")):
        own = Stack(stack.run_id, stack.log_dir / key)  # the process logs of each broker's stack
        own.log_dir.mkdir()
        with start() as broker:
            out["version"] = out["version"] or broker.label
            quiet = await idle(broker)
            out["idle"].append({"broker": broker.label, "cores": quiet})
            prefix = f"bench.{stack.run_id}.intake"
            cases = [("1 quorum queue", [f"{prefix}.q1"])]
            if broker.cluster is not None:  # alternated, so that a disturbance hits both alike
                spread = ("3 quorum queues", [f"{prefix}.q{i}" for i in range(1, 4)])
                cases = [*cases, spread] * args.intake_repeat
            for label, queues in cases:
                leaders, placed = await declare_queues(broker, queues)
                try:
                    r = await publish(broker, queues, args)
                finally:
                    await delete_queues(broker.url, queues)
                r.update(broker=broker.label, case=label, queues=len(queues), leaders=leaders, placed=placed)
                out["publish"].append(r)
                note("publish", f"{label}, {broker.label}", r)
            r = await live(broker, max(3.0, args.intake_seconds * 0.8), stack.run_id)
            r["broker"] = broker.label
            out["live"].append(r)
            note("live", broker.label, r)
            stacks = [(own, 1)]
            if broker.cluster is not None and args.intake_shards > 1:
                sharded = Stack(f"{stack.run_id}-s{args.intake_shards}", stack.log_dir / f"{key}-shards")
                sharded.log_dir.mkdir()
                stacks.append((sharded, args.intake_shards))
            for on, shards in stacks:
                streams, b = await system(broker, args, on, make_bench, quiet, shards)
                streams["broker"] = b["broker"] = broker.label
                out["streams"].append(streams)
                out["burst"].append(b)
                _print_system(streams, b)
    out["ratio_3q_1q"] = ratio_3q_1q(out["publish"])
    return out


def _print_system(streams: dict[str, Any], b: dict[str, Any]) -> None:
    label = _label(b)
    per_answer = (streams["broker_ms_per_answer"] or {}).get("broker")
    print(
        f"streams {label}: {streams['throughput_rps']} answers/s, broker {per_answer} ms per answer, "
        f"{streams['live']['frames_per_answer']} frames per answer",
        flush=True,
    )
    print(
        f"burst {label}: {b['enqueues_per_s']} POSTs/s, POST p50 {b['post_ms']['p50']} "
        f"p99 {b['post_ms']['p99']} ms, {b['correct']}/{b['requests']} correct",
        flush=True,
    )


def ratio_3q_1q(rows: list[dict[str, Any]]) -> float | None:
    """Mean confirmed msg/s into 3 queues over that into 1, on the cluster."""
    on_cluster = [r for r in rows if r["broker"].startswith("3-node")]
    one = [r["msgs_per_s"] for r in on_cluster if r["queues"] == 1]
    three = [r["msgs_per_s"] for r in on_cluster if r["queues"] == 3]
    if not one or not three or not sum(one):
        return None
    return round((sum(three) / len(three)) / (sum(one) / len(one)), 2)


def main(args: argparse.Namespace, make_bench: Callable[..., Any], commit: str | None) -> int:
    """``bench/run.py --only cluster-intake``: measure, write the results, print them.

    ``make_bench``: ``run.Bench`` (its start, warm-up and burst are reused); ``commit``: the
    checked-out commit, for the results."""
    if args.intake_seconds is None:
        args.intake_seconds = 4.0 if args.quick else 10.0
    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(2)
    log_dir = Path(tempfile.mkdtemp(prefix=f"llm-stream-bench-{run_id}-"))
    stack = Stack(run_id, log_dir)
    print(f"run {run_id}: cluster intake, process logs in {log_dir}", flush=True)
    began = time.perf_counter()
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            part = runner.run(run_part(args, stack, make_bench))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stack.stop()
    version = part.pop("version") or ""
    result = {
        "run_id": run_id,
        "started_at": started_at,
        "duration_s": round(time.perf_counter() - began, 1),
        "machine": report.machine_info(version.split("RabbitMQ ")[-1].split(")")[0] or None),
        "config": {
            "command": " ".join(["uv run python bench/run.py", *sys.argv[1:]]),
            "commit": commit,
            "streams": {
                "users": STREAM_USERS,
                "answers": STREAM_USERS * STREAM_REQUESTS_PER_USER,
                "tokens": args.tokens,
                "tps": args.tps,
            },
            "burst": {
                "posts": args.burst,
                "concurrency": args.burst_concurrency,
                "read_timeout_s": BURST_READ_TIMEOUT_S,
            },
            "stack": f"1 API process, {args.workers} worker process(es) x {args.worker_concurrency}",
            "publish": {
                "seconds": args.intake_seconds,
                "channels": args.intake_channels,
                "in_flight_per_channel": args.intake_in_flight,
                "bytes": args.intake_bytes,
                "persistent": True,
                "confirms": True,
                "repeat": args.intake_repeat,
            },
            "task_shards": args.intake_shards,
            "live": {"publishers": LIVE_PUBLISHERS, "bytes": LIVE_BYTES, "window": LIVE_WINDOW},
        },
        **part,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    text = markdown(result)
    (RESULTS / f"{args.out}.md").write_text(text)
    print("\n" + text)
    print(f"written: {RESULTS / args.out}.json and .md")
    return 0


# -- the report -------------------------------------------------------------------------------


def _where(label: str) -> str:
    return "cluster" if label.startswith("3-node") else "single node"


def _label(part: dict[str, Any]) -> str:
    """Where a stack ran: the broker, and its task shards when there are several."""
    shards = part.get("task_shards", 1)
    return _where(part["broker"]) + (f", TASK_SHARDS={shards}" if shards > 1 else "")


def _nodes(cores: dict[str, float], leaders: Sequence[str] = ()) -> str:
    """``0.45* / 0.36 / 0.39``: each node's cores, ``*`` where a measured queue's leader is."""
    nodes = sorted(n for n in cores if n.startswith("node"))
    return " / ".join(f"{cores[n]:.2f}{'*' if n in leaders else ''}" for n in nodes)


def _lookups(part: dict[str, Any]) -> str:
    found = part.get("history_lookups")
    return f"{found['lookups']} ({found['failed']})" if found else "-"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    m, c = result["machine"], result["config"]
    lines = [
        "# Cluster intake",
        "",
        f"{result['started_at']}, {result['duration_s']} s, commit {c['commit']}; {m['cores']} cores "
        f"({m['cpu_model']}), RabbitMQ {m['rabbitmq']}, Python {m['python']}. Every node, the stack, "
        "the balancer and the client share these cores.",
        "",
        "Idle, no client: "
        + "; ".join(f"{_where(i['broker'])} {_nodes(i['cores'])} cores" for i in result.get("idle", []))
        + ".",
        "",
        f"## Streams: async closed loop, {c['streams']['users']} users, {c['streams']['answers']} answers",
        "",
        "Streams read as they are produced (POST /chat/async, then GET /stream/{id}); the mock's "
        f"{c['streams']['tokens']} tokens at {c['streams']['tps']:g} tokens/s.",
        "",
        "| broker | answers/s | TTFT p50 ms | TTFT p99 ms | POST p99 ms | errors | broker CPU ms per answer "
        "(node1 / 2 / 3) | less the idle nodes' | live frames per answer | frames per live message |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["streams"]:
        per = r["broker_ms_per_answer"] or {}
        nodes = " / ".join(f"{per[n]:.2f}" for n in sorted(per) if n.startswith("node"))
        lines.append(
            _row(
                _label(r), r["throughput_rps"], r["ttft_ms"]["p50"], r["ttft_ms"]["p99"],
                r["post_ms"]["p99"], r["errors"] + r["wrong"], f"{per.get('broker')} ({nodes})",
                per.get("less_idle"), r["live"]["frames_per_answer"], r["live"]["frames_per_message"],
            )
        )
    lines += [
        "",
        f"## Burst: {c['burst']['posts']} POSTs /chat/async at C={c['burst']['concurrency']}",
        "",
        "All the POSTs, then every stream read to its end (a stream not done "
        f"{c['burst']['read_timeout_s']:g} s after the POSTs ended counts as an error). Cores during "
        "the POSTs.",
        "",
        "| broker | task queue leaders | accepted POSTs/s | POST p50 ms | POST p99 ms | API cores "
        "| worker cores | beam.smp cores (node1 / 2 / 3) | balancer cores | streams read | errors "
        "| history lookups done (failed) | API stall reconnects | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in result["burst"]:
        cores = b["post_phase_cores"]
        errors = ", ".join(f"{k} {v}" for k, v in b["error_kinds"].items()) or "0"
        lines.append(
            _row(
                _label(b), ", ".join(x or "?" for x in b.get("task_queue_leaders", [])),
                b["enqueues_per_s"], b["post_ms"]["p50"], b["post_ms"]["p99"],
                cores.get("api"), cores.get("worker"), _nodes(cores), cores.get("balancer", "-"),
                f"{b['correct']}/{b['requests']} in {b['read_s']:g} s", errors, _lookups(b),
                b.get("api_stalls"), b["background_cores"],
            )
        )
    p = c["publish"]
    lines += [
        "",
        f"## The broker alone: confirmed publishes ({p['channels']} channels x "
        f"{p['in_flight_per_channel']} in flight, {p['bytes']} B persistent, {p['seconds']:g} s)",
        "",
        "| broker | queues | leaders | confirmed msg/s | confirm p50 ms | confirm p99 ms "
        "| beam.smp cores (node1 / 2 / 3, * leads) | broker CPU µs per msg | balancer cores "
        "| client cores | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["publish"]:
        leaders = [x for x in r["leaders"] if x]
        lines.append(
            _row(
                _where(r["broker"]), r["queues"], f"{', '.join(leaders)} ({r['placed']})", r["msgs_per_s"],
                r["confirm_ms"]["p50"], r["confirm_ms"]["p99"], _nodes(r["cores"], leaders),
                r["broker_us_per_msg"], r["cores"].get("balancer", "-"), r["cores"]["client"],
                r["background_cores"],
            )
        )
    if result.get("ratio_3q_1q") is not None:
        lines += ["", f"3 queues / 1 queue on the cluster (mean msg/s of each): x{result['ratio_3q_1q']}"]
    live_c = c["live"]
    lines += [
        "",
        f"## Live messages ({live_c['publishers']} publishers, unconfirmed, {live_c['bytes']} B, "
        f"one no-ack consumer, {live_c['window']} in flight)",
        "",
        "| broker | delivered msg/s | latency p50 ms | latency p99 ms | beam.smp cores (node1 / 2 / 3) "
        "| broker CPU µs per msg | balancer cores | client cores | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["live"]:
        lines.append(
            _row(
                _where(r["broker"]), r["msgs_per_s"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
                _nodes(r["cores"]), r["broker_us_per_msg"], r["cores"].get("balancer", "-"),
                r["cores"]["client"], r["background_cores"],
            )
        )
    return "\n".join(lines) + "\n"
