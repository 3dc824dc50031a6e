"""Scale-out: R API processes behind HAProxy, plus one that gets no clients; memory; restart.

Three measurements, each on a stack of its own (API processes, workers, queue and exchange
names; the mock LLM is the run's):

- **Scale-out** (R = 1, 2, 4 by default): R API processes (one uvicorn process each, their own
  ports) behind HAProxy, round-robin without affinity, and one more API process on the same
  broker that no client reaches. The async closed loop goes through the balancer, and with
  R > 1 every stream is read on another replica than the one that took its POST (request k
  is POSTed on replica k mod R and read on the next: ``crossed``, a header HAProxy routes on),
  the costliest case, and one that does not depend on how round-robin happens to pair POSTs
  and GETs. HAProxy names the replica that answered in ``X-Served-By``; that is how each
  replica's served tokens are counted.
- **Buffered answers**: one API process, N answers of 1,000 tokens (generated fast, through
  prompt directives), its RSS before and after.
- **Restart with history**: a history stream is filled with what ``--history-s`` seconds of
  the load leave there (an acceptance marker and a transcript per session, as the API and the
  workers write them); a stack of the largest R starts on it, and while the closed loop runs
  through the balancer, one replica is SIGKILLed and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from llm_stream_mockllm.answer import expected_answer

import loadgen
import report
from context import BenchRun
from stack import CpuMeter, Service, StackDied, background_cores, broker_names, cpu_seconds, free_port

HAPROXY_CANDIDATES = ("haproxy", "/usr/sbin/haproxy")
HAPROXY_INSTALL = "sudo apt-get install -y haproxy"
CHECK_INTERVAL_MS = 500
HAPROXY_MAXCONN = 4000  # it needs about two descriptors per connection, within the bench's limit
READY_POLL_S = 0.01
READY_TIMEOUT_S = 120.0
IDLE_BASELINE_S = 2.0
RSS_TOKENS = 1000
RSS_PROMPT_DIRECTIVES = f"[[mock:tokens={RSS_TOKENS}]] [[mock:tps=20000]] [[mock:ttft_ms=0]]"
RSS_SETTLE_S = 1.0
HISTORY_PUBLISH_WINDOW = 2000


def find_haproxy() -> str | None:
    for candidate in HAPROXY_CANDIDATES:
        if found := shutil.which(candidate):
            return found
    return None


ROUTE_HEADER = "x-bench-replica"


def crossed(servers: Sequence[str]) -> loadgen.Route:
    """Request k: POST on server k mod R, its stream read on the next one (mod R)."""
    count = 0

    def route() -> tuple[dict[str, str], dict[str, str]]:
        nonlocal count
        k, count = count, count + 1
        post, read = servers[k % len(servers)], servers[(k + 1) % len(servers)]
        return {ROUTE_HEADER: post}, {ROUTE_HEADER: read}

    return route


def server_name(index: int) -> str:
    return f"api{index}"


def haproxy_config(
    port: int,
    servers: Sequence[tuple[str, int]],
    *,
    check_interval_ms: int = CHECK_INTERVAL_MS,
    maxconn: int = HAPROXY_MAXCONN,
) -> str:
    """HAProxy in front of the API processes, configured as an ingress would be.

    Round-robin, no affinity: every request is balanced on its own (``http-server-close``
    keeps the client's connection open but closes the one to the server after each response,
    so the next request on it is balanced again). Long client and server timeouts, because an
    SSE stream is one long response. A server is taken out when ``/health/full`` fails and put
    back when it answers 200 (readiness). A connection refused by a dead server is retried on
    another one (``redispatch``). ``X-Served-By`` names the server that answered.
    """
    lines = [
        "global",
        f"    maxconn {maxconn}",
        "    nbthread 1",
        "",
        "defaults",
        "    mode http",
        "    option http-server-close",
        "    timeout connect 5s",
        "    timeout client 300s",
        "    timeout server 300s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 30s",
        "    retries 3",
        "    option redispatch 1",
        "",
        "frontend ingress",
        f"    bind 127.0.0.1:{port}",
        f"    maxconn {maxconn}",
        "    monitor-uri /haproxy-health",
        "    default_backend api",
        "",
        "backend api",
        "    balance roundrobin",
        # The load generator may name the server of a request (X-Bench-Replica): that is how
        # the scale-out part reads every stream on another replica than the one that took its
        # POST. A request without it, or naming a server that is down, is balanced.
        *(f"    use-server {name} if {{ req.hdr({ROUTE_HEADER}) -m str {name} }}" for name, _ in servers),
        "    option httpchk GET /health/full",
        "    http-check expect status 200",
        "    http-response set-header X-Served-By %s",
    ]
    for name, server_port in servers:
        lines.append(
            f"    server {name} 127.0.0.1:{server_port} check inter {check_interval_ms}ms fall 1 rise 1"
        )
    return "\n".join(lines) + "\n"


def per_replica(
    results: Iterable[loadgen.Result],
    n_tokens: int,
    cpu_s: dict[str, float],
    served: Sequence[str],
    idle: Sequence[str],
) -> dict[str, Any]:
    """Each API process's share: what it served and what CPU it used for it.

    A replica's served tokens are those of the correct answers whose stream it sent (the
    ``X-Served-By`` of the GET). An idle replica serves nothing: its CPU is divided by every
    token the stack delivered (CPU per token of sessions it does not serve).
    """
    results = list(results)
    correct = [r for r in results if r.correct]
    total_tokens = len(correct) * n_tokens
    rows: list[dict[str, Any]] = []
    for name in served:
        tokens = sum(n_tokens for r in correct if r.stream_by == name)
        cpu = cpu_s.get(name, 0.0)
        rows.append(
            {
                "name": name,
                "role": "served",
                "posts": sum(1 for r in results if r.post_by == name and r.post is not None),
                "streams": sum(1 for r in correct if r.stream_by == name),
                "tokens": tokens,
                "cpu_s": round(cpu, 3),
                "cpu_ms_per_served_token": round(cpu * 1000 / tokens, 4) if tokens else None,
            }
        )
    for name in idle:
        cpu = cpu_s.get(name, 0.0)
        rows.append(
            {
                "name": name,
                "role": "idle",
                "posts": 0,
                "streams": 0,
                "tokens": 0,
                "cpu_s": round(cpu, 3),
                "cpu_us_per_unserved_token": round(cpu * 1e6 / total_tokens, 3) if total_tokens else None,
            }
        )
    api_cpu = sum(cpu_s.get(name, 0.0) for name in (*served, *idle))
    unattributed = sum(1 for r in correct if r.stream_by not in served)
    return {
        "replicas": rows,
        "tokens": total_tokens,
        "unattributed_streams": unattributed,
        "api_cpu_s": round(api_cpu, 3),
        "api_cpu_ms_per_token": round(api_cpu * 1000 / total_tokens, 4) if total_tokens else None,
    }


def ttft_by_path(results: Iterable[loadgen.Result]) -> dict[str, Any]:
    """TTFT of the streams read where the POST was accepted, and of those read elsewhere."""
    done = [r for r in results if r.ok and r.ttft is not None and r.post_by and r.stream_by]
    same = [r.ttft for r in done if r.post_by == r.stream_by]
    other = [r.ttft for r in done if r.post_by != r.stream_by]
    return {
        "same_replica": {"requests": len(same), "ttft_ms": report.distribution_ms(same)},
        "other_replica": {"requests": len(other), "ttft_ms": report.distribution_ms(other)},
    }


METRICS = {
    "lookups": "llmstream_history_lookup_duration_seconds_count",
    "lookup_s": "llmstream_history_lookup_duration_seconds_sum",
    "lookup_failures": 'llmstream_history_failures_total{kind="lookup"}',
    "frames": "llmstream_events_received_total",
    "unknown_frames": "llmstream_unknown_session_frames_total",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by ``name{labels}`` as written."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[key.strip()] = float(value)
    return samples


def metric_deltas(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """History lookups (count, seconds, failures) and live frames of one replica in a scenario."""
    if before is None or after is None:
        return None
    out = {name: round(after.get(key, 0.0) - before.get(key, 0.0), 3) for name, key in METRICS.items()}
    out["lookup_mean_ms"] = round(out["lookup_s"] * 1000 / out["lookups"], 1) if out["lookups"] else None
    return out


async def scrape_all(session: aiohttp.ClientSession, apis: dict[str, Service]) -> dict[str, dict[str, float]]:
    async def one(service: Service) -> dict[str, float] | None:
        try:
            async with asyncio.timeout(5):
                async with session.get(f"http://127.0.0.1:{_port(service)}/metrics") as r:
                    return parse_metrics(await r.text()) if r.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    found = await asyncio.gather(*(one(s) for s in apis.values()))
    return {name: samples for name, samples in zip(apis, found, strict=True) if samples is not None}


def restart_window(
    results: Iterable[loadgen.Result],
    *,
    killed_at: float,
    ready_at: float,
    window_s: float,
    replica: str,
) -> dict[str, Any]:
    """Steady state before a kill against the sessions that start right after the restart.

    ``steady``: answers sent and finished before the kill. ``after``: requests sent within
    ``window_s`` of the restarted process answering ready; ``touching`` those whose POST or
    stream was served by the restarted replica. ``broken``: requests in flight at the kill
    that failed (a stream cut by the kill; the client would resume elsewhere).
    """
    sent = [r for r in results if r.sent is not None]
    steady = [
        r
        for r in sent
        if r.ok and r.total is not None and r.sent + r.total < killed_at and r.ttft is not None
    ]
    steady_p99 = report.percentile([r.ttft for r in steady], 99)
    after = [r for r in sent if ready_at <= r.sent < ready_at + window_s]
    touching = [r for r in after if replica in (r.post_by, r.stream_by)]
    in_flight = [r for r in sent if r.sent < killed_at and (r.total is None or r.sent + r.total >= killed_at)]

    def ttfts(rs: list[loadgen.Result]) -> list[float]:
        return [r.ttft for r in rs if r.ok and r.ttft is not None]

    def above(rs: list[loadgen.Result]) -> int | None:
        if steady_p99 is None:
            return None
        return sum(1 for t in ttfts(rs) if t > steady_p99)

    return {
        "steady_requests": len(steady),
        "steady_ttft_ms": report.distribution_ms(ttfts(steady)),
        "after_requests": len(after),
        "after_errors": sum(1 for r in after if not r.ok),
        "after_ttft_ms": report.distribution_ms(ttfts(after)),
        "after_above_steady_p99": above(after),
        "touching_requests": len(touching),
        "touching_ttft_ms": report.distribution_ms(ttfts(touching)),
        "touching_above_steady_p99": above(touching),
        "in_flight_at_kill": len(in_flight),
        "broken_by_kill": sum(1 for r in in_flight if not r.ok),
        "window_s": window_s,
    }


@dataclass
class Group:
    """One stack of the scale-out part: its API processes, workers, balancer and names."""

    label: str
    names: dict[str, str]
    replicas: list[Service] = field(default_factory=list)
    idle: list[Service] = field(default_factory=list)
    workers: list[Service] = field(default_factory=list)
    balancer: Service | None = None
    url: str = ""

    @property
    def services(self) -> list[Service]:
        return [*self.replicas, *self.idle, *self.workers, *([self.balancer] if self.balancer else [])]

    def meters(self) -> dict[str, CpuMeter]:
        meters = {s.name.split(":")[-1]: CpuMeter.of_pids([s.popen.pid]) for s in self.replicas}
        # The idle replica uses milliseconds in a scenario: ticks of 10 ms would be its whole reading.
        for s in self.idle:
            meters[s.name.split(":")[-1]] = CpuMeter.of_pids([s.popen.pid], precise=True)
        meters["worker"] = CpuMeter.of_pids([w.popen.pid for w in self.workers])
        if self.balancer is not None:
            meters["balancer"] = CpuMeter.of_pids([self.balancer.popen.pid])
        return meters


class ScaleOut:
    def __init__(self, bench: BenchRun) -> None:
        self.bench = bench
        self.args = bench.args
        self.stack = bench.stack

    # -- stacks ----------------------------------------------------------------------------

    def _common_env(self, names: dict[str, str]) -> dict[str, str]:
        return {
            "RABBIT_MQ": self.args.amqp_url,
            "LOG_LEVEL": self.args.log_level,
            "OPENAI_BASE_URL": f"{self.bench.mock_url}/v1",
            "OPENAI_API_KEY": "mock",
            **names,
        }

    def _start_api(self, group: Group, name: str) -> Service:
        port = free_port()
        return self.stack.start(
            f"{group.label}:{name}",
            "llm-stream-api",
            {**self._common_env(group.names), "HOST": "127.0.0.1", "PORT": str(port), "UVICORN_WORKERS": "1"},
            f"http://127.0.0.1:{port}/health/full",
        )

    def group_names(self, label: str) -> dict[str, str]:
        names = broker_names(f"{self.bench.run_id}.{label}")
        if names not in self.stack.topologies:
            self.stack.topologies.append(names)
        return names

    async def start_group(self, label: str, replicas: int, *, idle: bool, balancer: bool) -> Group:
        names = self.group_names(label)
        group = Group(label, names)
        for index in range(self.args.workers):
            metrics_port = free_port()
            group.workers.append(
                self.stack.start(
                    f"{label}:worker{index}",
                    "llm-stream-worker",
                    {
                        **self._common_env(names),
                        "WORKER_CONCURRENCY": str(self.args.worker_concurrency),
                        "METRICS_HOST": "127.0.0.1",
                        "METRICS_PORT": str(metrics_port),
                    },
                    f"http://127.0.0.1:{metrics_port}/health",
                )
            )
        group.replicas = [self._start_api(group, server_name(i)) for i in range(replicas)]
        await self.stack.wait_ready(group.services, timeout=60)
        if idle:
            # Started once a served replica keeps the queue log (docs/adr/0004): the idle one
            # measures what a replica that serves nobody pays, not what the keeper does.
            await self._wait_for_keeper(group)
            group.idle = [self._start_api(group, "idle")]
            await self.stack.wait_ready(group.idle, timeout=60)
        if balancer:
            haproxy = find_haproxy()
            if haproxy is None:
                raise RuntimeError(f"the scale-out scenario needs HAProxy: {HAPROXY_INSTALL}")
            port = free_port()
            servers = [(server_name(i), _port(s)) for i, s in enumerate(group.replicas)]
            config = Path(self.stack.log_dir) / f"haproxy-{label}.cfg"
            config.write_text(haproxy_config(port, servers))
            group.balancer = self.stack.start(
                f"{label}:haproxy",
                haproxy,
                {},
                f"http://127.0.0.1:{port}/haproxy-health",
                args=["-db", "-f", str(config)],
            )
            await self.stack.wait_ready([group.balancer], timeout=30)
            group.url = f"http://127.0.0.1:{port}"
            await self._wait_servers_up(group)
        else:
            group.url = f"http://127.0.0.1:{_port(group.replicas[0])}"
        return group

    async def _wait_for_keeper(self, group: Group, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                for replica in group.replicas:
                    url = f"http://127.0.0.1:{_port(replica)}/metrics"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(url) as response:
                            if "\nllmstream_queue_keeper 1.0" in await response.text():
                                return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"no replica of {group.label} keeps the queue log after {timeout_s:g}s")

    async def _wait_servers_up(self, group: Group) -> None:
        """Until a request has reached every replica through the balancer (checks passed)."""
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as session:
            while len(seen) < len(group.replicas) and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{group.url}/health") as r:
                        if name := r.headers.get(loadgen.SERVED_BY):
                            seen.add(name)
                await asyncio.sleep(0.05)

    def stop_group(self, group: Group) -> None:
        self.stack.stop([s for s in group.services if s in self.stack.services])

    def check_alive(self, group: Group, during: str) -> None:
        for service in group.services:
            if service.popen.poll() is not None:
                raise StackDied(
                    f"{service.name} exited with {service.popen.returncode} during {during}:\n"
                    f"{service.log_tail()}"
                )

    def _shared_meters(self) -> dict[str, CpuMeter]:
        return {k: v for k, v in self.bench.meters.items() if k in ("mock", "broker", "loadgen")}

    async def warm_up(self, session: aiohttp.ClientSession, url: str, label: str) -> None:
        prompts = [f"bench warmup {label} {i}" for i in range(20)]
        run = await loadgen.closed_loop(
            session,
            loadgen.chat_async(url, self.bench.n_tokens),
            prompts,
            10,
            request_timeout=self.args.request_timeout,
            deadline=self.args.scenario_timeout,
        )
        bad = [r for r in run.results if not r.correct]
        if bad:
            first = next((r.error for r in bad if r.error), "wrong answer")
            print(f"warm-up {label}: {len(bad)}/{len(prompts)} failed ({first})", flush=True)

    # -- scale-out -------------------------------------------------------------------------

    async def scenario(
        self, session: aiohttp.ClientSession, group: Group, direct: dict[str, Any] | None
    ) -> dict[str, Any]:
        concurrency = self.args.scale_out_concurrency
        replicas = len(group.replicas)
        name = f"scale-out R={replicas}"
        served = [server_name(i) for i in range(replicas)]
        idle = ["idle"] if group.idle else []
        meters = {**self._shared_meters(), **group.meters()}
        prompts = [f"bench {group.label} {i}" for i in range(concurrency * self.args.requests_per_user)]
        apis = dict(zip((*served, *idle), (*group.replicas, *group.idle), strict=True))
        # What the idle replica uses with no traffic at all: timers, heartbeats.
        idle_meters = {k: meters[k] for k in idle}
        quiet = cpu_seconds(idle_meters)
        await asyncio.sleep(IDLE_BASELINE_S)
        quiet = {k: v - quiet[k] for k, v in cpu_seconds(idle_meters).items() if k in idle}
        metrics_before = await scrape_all(session, apis)
        before = cpu_seconds(meters)
        route = crossed(served) if replicas > 1 else None
        run = await loadgen.closed_loop(
            session,
            loadgen.chat_async(group.url, self.bench.n_tokens, route=route),
            prompts,
            concurrency,
            request_timeout=self.args.request_timeout,
            deadline=self.args.scenario_timeout,
            ramp=self.args.ramp,
        )
        after = cpu_seconds(meters)
        metrics_after = await scrape_all(session, apis)
        delta = {k: after[k] - before[k] for k in after}
        by_process = {k: delta.pop(k) for k in (*served, *idle)}
        delta["api"] = sum(by_process.values())
        summary = report.summarise(
            name, "async", concurrency, run.results, run.wall, self.bench.n_tokens, delta
        )
        if direct is not None:
            report.compare(summary, direct)
        summary["replicas"] = replicas
        summary["per_replica"] = per_replica(run.results, self.bench.n_tokens, by_process, served, idle)
        for row in summary["per_replica"]["replicas"]:
            row["metrics"] = metric_deltas(metrics_before.get(row["name"]), metrics_after.get(row["name"]))
            if row["name"] in quiet:
                row["quiet_cpu_ms_per_s"] = round(quiet[row["name"]] * 1000 / IDLE_BASELINE_S, 3)
                row["cpu_ms_per_s"] = (
                    round(by_process[row["name"]] * 1000 / run.wall, 3) if run.wall else None
                )
        summary["ttft_by_path"] = ttft_by_path(run.results)
        summary["start_to_ready_s"] = [
            None if s.ready_s is None else round(s.ready_s, 2) for s in (*group.replicas, *group.idle)
        ]
        return summary

    # -- memory ----------------------------------------------------------------------------

    async def rss(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """RSS growth of one API process while it buffers ``--rss-answers`` 1,000-token answers."""
        group = await self.start_group("rss", 1, idle=False, balancer=False)
        try:
            api = psutil.Process(group.replicas[0].popen.pid)
            request = loadgen.chat_async(group.url, RSS_TOKENS)

            async def answers(label: str, count: int) -> list[loadgen.Result]:
                prompts = [f"bench {label} {i} {RSS_PROMPT_DIRECTIVES}" for i in range(count)]
                run = await loadgen.closed_loop(
                    session,
                    request,
                    prompts,
                    min(50, count),
                    request_timeout=self.args.request_timeout,
                    deadline=self.args.scenario_timeout,
                )
                return run.results

            await answers("rss-warmup", 20)
            await asyncio.sleep(RSS_SETTLE_S)
            before = api.memory_info().rss
            meters = {**self._shared_meters(), **group.meters()}
            cpu_before = cpu_seconds(meters)
            started = time.perf_counter()
            results = await answers("rss", self.args.rss_answers)
            wall = time.perf_counter() - started
            background = background_cores(meters, cpu_before, wall)
            await asyncio.sleep(RSS_SETTLE_S)
            after = api.memory_info().rss
            self.check_alive(group, "the buffered-answer measurement")
            async with session.get(f"{group.url}/health/full") as r:
                sessions = (await r.json()).get("sessions")
        finally:
            self.stop_group(group)
        correct = sum(1 for r in results if r.correct)
        text_bytes = len(expected_answer(f"bench rss 0 {RSS_PROMPT_DIRECTIVES}", RSS_TOKENS).encode())
        return {
            "answers": self.args.rss_answers,
            "tokens_per_answer": RSS_TOKENS,
            "correct": correct,
            "errors": sum(1 for r in results if not r.ok),
            "wall_s": round(wall, 2),
            "sessions_held": sessions,
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "rss_growth_mb": round((after - before) / 2**20, 2),
            "kb_per_answer": round((after - before) / 1024 / correct, 2) if correct else None,
            "text_kb_per_answer": round(text_bytes / 1024, 2),
            "background_cores": background,
        }

    # -- restart ---------------------------------------------------------------------------

    async def fill_history(self, names: dict[str, str], sessions: int) -> dict[str, Any]:
        """Declare the history stream of ``names`` and publish what ``sessions`` answers leave
        there, oldest first (before any process of that stack runs)."""
        import aio_pika
        from mqcommon.schemas import End, HistoryRecord, new_id
        from mqcommon.settings import BrokerSettings
        from mqcommon.topology import Topology, declare_queue

        settings = BrokerSettings(rabbit_mq=self.args.amqp_url, **{k.lower(): v for k, v in names.items()})
        events = Topology.from_settings(settings).events_stream

        span = self.args.history_s
        now = time.time()
        started = time.perf_counter()
        records = 0
        connection = await aio_pika.connect(self.args.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await declare_queue(channel, events)
            stream = events.name

            async def publish(record: HistoryRecord) -> None:
                message = aio_pika.Message(
                    record.encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers=record.headers(),
                )
                await channel.default_exchange.publish(message, routing_key=stream, timeout=30)

            pending: set[asyncio.Task[None]] = set()
            for i in range(sessions):
                at = now - span + span * i / max(sessions, 1)
                session_id = new_id()
                text = expected_answer(f"bench history {i}", self.bench.n_tokens)
                for record in (
                    HistoryRecord("accepted", session_id, at=at),
                    HistoryRecord("transcript", session_id, at=at + 1, text=text, end=End("done", len(text))),
                ):
                    pending.add(asyncio.create_task(publish(record)))
                    records += 1
                if len(pending) >= HISTORY_PUBLISH_WINDOW:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            if pending:
                await asyncio.gather(*pending)
        return {
            "sessions": sessions,
            "records": records,
            "seconds_of_load": span,
            "publish_s": round(time.perf_counter() - started, 2),
        }

    async def restart(
        self, session: aiohttp.ClientSession, replicas: int, rate: float, steady: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A stack of ``replicas`` on a filled history; SIGKILL one under load, start it again."""
        sessions = max(1, round(rate * self.args.history_s))
        print(
            f"restart: filling the history with {sessions} sessions ({self.args.history_s:g} s at "
            f"{rate:.1f}/s) ...",
            flush=True,
        )
        history = await self.fill_history(self.group_names("restart"), sessions)
        history["rate_per_s"] = round(rate, 2)
        print(f"restart: {history['records']} records in {history['publish_s']} s", flush=True)
        group = await self.start_group("restart", replicas, idle=False, balancer=True)
        try:
            await self.warm_up(session, group.url, group.label)
            return await self._kill_and_restart(session, group, history, steady)
        finally:
            self.stop_group(group)

    async def _kill_and_restart(
        self,
        session: aiohttp.ClientSession,
        group: Group,
        history: dict[str, Any],
        steady: dict[str, Any] | None,
    ) -> dict[str, Any]:
        victim = group.replicas[-1]
        victim_name = server_name(len(group.replicas) - 1)
        concurrency = self.args.scale_out_concurrency
        stop = asyncio.Event()
        timeline: dict[str, float] = {}
        ramp = self.args.ramp or 0.0

        async def kill_and_restart() -> None:
            await asyncio.sleep(ramp + self.args.restart_after)
            timeline["killed"] = time.perf_counter()
            self.stack.kill(victim)
            timeline["started"] = time.perf_counter()
            restarted = self.stack.restart(victim, f"{victim.name}-restarted")
            group.replicas[-1] = restarted
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as probe:
                while True:
                    gone = restarted.popen.poll() is not None
                    if gone or time.perf_counter() - timeline["started"] > READY_TIMEOUT_S:
                        timeline["ready"] = float("nan")
                        stop.set()
                        return
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with probe.get(restarted.health_url) as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(READY_POLL_S)
            timeline["ready"] = time.perf_counter()
            await asyncio.sleep(self.args.restart_window + self.bench.answer_s)
            stop.set()

        prompts = [f"bench restart {i}" for i in range(concurrency * 1000)]
        loop = loadgen.closed_loop(
            session,
            loadgen.chat_async(group.url, self.bench.n_tokens),
            prompts,
            concurrency,
            request_timeout=self.args.request_timeout,
            deadline=self.args.scenario_timeout,
            ramp=ramp,
            stop=stop,
        )
        meters = {**self._shared_meters(), **group.meters()}
        cpu_before = cpu_seconds(meters)
        run, _ = await asyncio.gather(loop, kill_and_restart())
        # The restarted process is not among the meters: its CPU counts as other load.
        background = background_cores(meters, cpu_before, run.wall)
        results = [r for r in run.results if r.error != "not sent"]
        ready_s = timeline["ready"] - timeline["started"]
        window = restart_window(
            results,
            killed_at=timeline["killed"],
            ready_at=timeline["ready"],
            window_s=self.args.restart_window,
            replica=victim_name,
        )
        return {
            "replicas": len(group.replicas),
            "history": history,
            "replica": victim_name,
            "requests": len(results),
            "errors": sum(1 for r in results if not r.ok),
            "wrong": sum(1 for r in results if r.ok and not r.correct),
            "error_kinds": dict(
                sorted(_kinds(r.error for r in results if not r.ok).items(), key=lambda kv: -kv[1])[:8]
            ),
            "kill_after_s": self.args.restart_after,
            "ready_s": None if ready_s != ready_s else round(ready_s, 3),
            "background_cores": background,
            "scale_out_ttft_p99_ms": None if steady is None else steady["ttft_ms"]["p99"],
            **window,
        }


def _kinds(errors: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for error in errors:
        kind = (error or "unknown")[:80]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _port(service: Service) -> int:
    return int(service.env["PORT"])
