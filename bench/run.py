"""llm-stream benchmark: the stack against the mock LLM, next to the mock on its own.

    uv run python bench/run.py            # full run, about 2 minutes
    uv run python bench/run.py --quick    # smaller run, under a minute
    uv run python bench/run.py --direct-only
    uv run python bench/run.py --only cancel   # the cancel latency alone
    uv run python bench/run.py --target http://127.0.0.1:8000 --mock-url http://127.0.0.1:8008

Without ``--target`` it starts a mock LLM, one API (``--api-workers`` uvicorn processes) and
``--workers`` worker processes on free ports, with queue names of their own, and stops and
deletes all of it at the end. For each concurrency (``--concurrency``, default 50 and 200) it
runs the closed loop directly against the mock, then through the stack in each mode
(``async``: POST /chat/async + GET /stream/{id}; ``sync``: POST /chat), and finally the burst
(``--burst`` POSTs as fast as ``--burst-concurrency`` clients can, then every stream read to
the end), then the cancel latency (``cancel``, a stack of its own). Every answer is checked
against the mock's deterministic answer. Results go to
``bench/results/<out>.json`` and ``.md``, and PNG charts of them (bench/charts.py); see
bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import uvloop

import cancel
import charts
import cluster
import cost
import loadgen
import report
import scaleout
from stack import (
    CpuMeter,
    Stack,
    StackDied,
    broker_meter,
    broker_names,
    delete_topology,
    free_port,
    rabbitmq_version,
)

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP_REQUESTS, WARMUP_CONCURRENCY = 20, 10
BUSY_CORES = 0.3
DEFAULT_RATE = 40.0  # req/s of 50 users at 50 tokens/s, when nothing measured it


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark llm-stream (API + RabbitMQ + workers) against the mock LLM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="2 requests per user, burst of 400")
    p.add_argument("--target", metavar="URL", help="benchmark a running API instead of starting one")
    p.add_argument("--mock-url", default="http://127.0.0.1:8008", help="mock LLM of --target")
    for kind in ("api", "worker", "mock"):
        p.add_argument(
            f"--{kind}-pids",
            type=lambda text: [int(pid) for pid in text.split(",") if pid],
            metavar="PID,...",
            help=f"with --target: the {kind} processes to measure the CPU of; if not given, "
            "every local process with the service's name",
        )
    p.add_argument("--direct-only", action="store_true", help="only the direct baseline")
    p.add_argument("--modes", default="async,sync", help="stack modes, comma-separated")
    p.add_argument("--concurrency", default="50,200", help="closed-loop users, comma-separated")
    p.add_argument("--requests-per-user", type=int, help="N = this x C (default 10, quick 2)")
    p.add_argument("--burst", type=int, help="burst size, 0 to skip (default 2000, quick 400)")
    p.add_argument("--burst-concurrency", type=int, default=100)
    p.add_argument("--api-workers", type=int, default=1, help="UVICORN_WORKERS of the API")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=128,
        help="WORKER_CONCURRENCY of each worker; workers x this must reach the top concurrency",
    )
    p.add_argument("--ttft-ms", type=float, default=200, help="mock LLM time to first token")
    p.add_argument("--tokens", type=int, default=50, help="mock LLM answer length")
    p.add_argument("--tps", type=float, default=50, help="mock LLM tokens per second")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the API and workers")
    p.add_argument(
        "--ramp",
        type=float,
        help="seconds over which the users of a scenario start (default: one answer's duration)",
    )
    p.add_argument("--request-timeout", type=float, default=60, help="seconds per request")
    p.add_argument("--scenario-timeout", type=float, default=180, help="seconds before a scenario stops")
    p.add_argument("--out", help="results file name (default 'latest', quick: 'quick')")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is not met")
    scale = p.add_argument_group("scale-out (API processes behind HAProxy; see bench/README.md)")
    scale.add_argument(
        "--only",
        choices=("all", "scale-out", "cancel", "cluster-intake"),
        default="all",
        help="scale-out: only the direct baseline at --scale-out-concurrency, the scale-out "
        "scenarios, buffered-answer RSS and the restart; cancel: only the cancel scenario; "
        "cluster-intake: only the intake on a private node and a 3-node cluster (bench/cluster.py)",
    )
    scale.add_argument(
        "--scale-out",
        metavar="R,...",
        help="API processes behind the balancer, one scenario each ('' or 0 to skip the whole "
        "part; default 1,2,4, quick 1,4)",
    )
    scale.add_argument("--scale-out-concurrency", type=int, default=50, help="users of the scale-out loop")
    scale.add_argument(
        "--rss-answers", type=int, help="buffered 1,000-token answers, 0 to skip (default 500, quick 100)"
    )
    scale.add_argument(
        "--history-s",
        type=float,
        help="seconds of load whose history fills the stream before the restart, 0 to skip the "
        "restart (default 120, quick 60)",
    )
    scale.add_argument(
        "--restart-after",
        type=float,
        help="seconds of steady load before the replica is killed (default 8, quick 4)",
    )
    scale.add_argument(
        "--restart-window",
        type=float,
        default=3.0,
        help="sessions sent this many seconds after the restarted replica is ready count as 'after'",
    )
    cost = p.add_argument_group("cost model (CPU per answer = a + b x tokens; see bench/cost.py)")
    cost.add_argument(
        "--cost-answers", type=int,
        help="async answers of each length (10, 50, 500 tokens), 0 to skip (default 100, quick 50)",
    )
    cost.add_argument("--cost-concurrency", type=int, default=50, help="users of the cost loops")
    cancels = p.add_argument_group("cancel latency (a stack of its own; see bench/README.md)")
    cancels.add_argument(
        "--cancel-running", type=int,
        help="generations cancelled while they run, 0 to skip the scenario (default 50, quick 20)",
    )
    cancels.add_argument(
        "--cancel-queued", type=int, help="tasks cancelled while queued (default 20, quick 10)"
    )
    cancels.add_argument(
        "--cancel-spread", type=float, default=2.0,
        help="each running generation is cancelled at a random moment up to this many seconds "
        "after its first chunk",
    )
    cancels.add_argument("--cancel-seed", type=int, default=1, help="seed of those random moments")
    cluster.add_arguments(p)
    args = p.parse_args(argv)
    if args.cost_answers is None:
        args.cost_answers = 50 if args.quick else 100
    if args.cancel_running is None:
        args.cancel_running = 20 if args.quick else 50
    if args.cancel_queued is None:
        args.cancel_queued = 10 if args.quick else 20
    if args.scale_out is None:
        args.scale_out = "1,4" if args.quick else "1,2,4"
    try:
        args.scale_out = [int(r) for r in args.scale_out.split(",") if r.strip() and int(r) > 0]
    except ValueError:
        p.error(f"--scale-out: not a list of numbers: {args.scale_out!r}")
    if args.rss_answers is None:
        args.rss_answers = 100 if args.quick else 500
    if args.history_s is None:
        args.history_s = 60.0 if args.quick else 120.0
    if args.restart_after is None:
        args.restart_after = 4.0 if args.quick else 8.0
    args.modes = [m for m in args.modes.split(",") if m]
    if unknown := set(args.modes) - {"async", "sync"}:
        p.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.requests_per_user is None:
        args.requests_per_user = 2 if args.quick else 10
    if args.burst is None:
        args.burst = 400 if args.quick else 2000
    if args.only == "scale-out":
        if not args.scale_out:
            p.error("--only scale-out needs --scale-out")
        args.modes, args.burst, args.concurrency = [], 0, [args.scale_out_concurrency]
        args.cancel_running = args.cost_answers = 0
    if args.only == "cancel":
        if not args.cancel_running:
            p.error("--only cancel needs --cancel-running")
        args.modes, args.burst, args.concurrency = [], 0, []
        args.scale_out, args.rss_answers, args.history_s = [], 0, 0.0
        args.cost_answers = 0
    if args.out is None:
        args.out = "quick" if args.quick else "latest"
        if args.only == "scale-out":
            args.out += "-scale-out"
        if args.only == "cancel":
            args.out = "quick-cancel" if args.quick else "cancel"
        if args.only == "cluster-intake":
            args.out = "quick-cluster-intake" if args.quick else "cluster-intake"
    if args.direct_only or args.target:
        # The scale-out and cancel parts start their own processes: not with a stack given by --target.
        args.scale_out, args.rss_answers, args.history_s = [], 0, 0.0
        args.cancel_running = 0
    if args.direct_only:
        args.modes, args.burst, args.cost_answers = [], 0, 0
    return args


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.run_id = stack.run_id
        self.names = broker_names(self.run_id)
        self.meters: dict[str, CpuMeter] = {}
        self.notes: list[str] = []
        self.n_tokens = args.tokens
        self.mock_url = args.mock_url
        self.api_url = args.target.rstrip("/") if args.target else None
        self.main_services: list[Any] = []
        self.answer_s = 0.0

    async def start(self) -> None:
        args = self.args
        if not args.target:
            port = free_port()
            mock = self.stack.start(
                "mock",
                "llm-stream-mockllm",
                {
                    "MOCK_HOST": "127.0.0.1",
                    "MOCK_PORT": str(port),
                    "MOCK_TTFT_MS": str(args.ttft_ms),
                    "MOCK_TOKENS": str(args.tokens),
                    "MOCK_TPS": str(args.tps),
                    "MOCK_LOG_LEVEL": "warning",
                },
                f"http://127.0.0.1:{port}/health",
            )
            self.mock_url = f"http://127.0.0.1:{port}"
            await self.stack.wait_ready([mock], timeout=30)
            self.meters["mock"] = CpuMeter.of_pids([mock.popen.pid])
        async with aiohttp.ClientSession() as session, session.get(f"{self.mock_url}/health") as r:
            health = orjson.loads(await r.read())
        self.mock_config = {k: health[k] for k in ("ttft_ms", "tokens", "tps")}
        self.n_tokens = int(health["tokens"])
        self.answer_s = (health["ttft_ms"] / 1000) + max(self.n_tokens - 1, 0) / health["tps"]
        if self.args.ramp is None:
            self.args.ramp = self.answer_s

        if args.modes or args.burst:
            if args.target:
                self._find_target_processes()
            else:
                await self.start_stack()
        broker = broker_meter(args.amqp_url)
        if broker:
            self.meters["broker"] = broker
        self.meters["loadgen"] = CpuMeter([psutil.Process()], descendants=False)

    async def start_stack(self, api_env: dict[str, str] | None = None) -> None:
        """The API and the workers, on the mock; ``api_env``: more environment for the API."""
        args = self.args
        common = {
            "RABBIT_MQ": args.amqp_url,
            "LOG_LEVEL": args.log_level,
            "OPENAI_BASE_URL": f"{self.mock_url}/v1",
            "OPENAI_API_KEY": "mock",
            **self.names,
        }
        api_port = free_port()
        api = self.stack.start(
            "api",
            "llm-stream-api",
            {
                **common,
                "HOST": "127.0.0.1",
                "PORT": str(api_port),
                "UVICORN_WORKERS": str(args.api_workers),
                **(api_env or {}),
            },
            f"http://127.0.0.1:{api_port}/health/full",
        )
        workers = []
        for index in range(args.workers):
            metrics_port = free_port()
            workers.append(
                self.stack.start(
                    f"worker{index}",
                    "llm-stream-worker",
                    {
                        **common,
                        "WORKER_CONCURRENCY": str(args.worker_concurrency),
                        "METRICS_HOST": "127.0.0.1",
                        "METRICS_PORT": str(metrics_port),
                    },
                    f"http://127.0.0.1:{metrics_port}/health",
                )
            )
        await self.stack.wait_ready([api, *workers], timeout=60)
        self.main_services = [api, *workers]
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.meters["api"] = CpuMeter.of_pids([api.popen.pid])
        self.meters["worker"] = CpuMeter.of_pids([w.popen.pid for w in workers])
        capacity = args.workers * args.worker_concurrency
        if capacity < max(args.concurrency):
            self.notes.append(
                f"workers x worker concurrency = {capacity} < {max(args.concurrency)} users: "
                "the top concurrency queues in the broker."
            )

    def _profile_targets(self) -> dict[str, int]:
        """The API process and the first worker, when this run started them."""
        found = {}
        for name in ("api", "worker"):
            meter = self.meters.get(name)
            if meter is not None and meter.roots and not self.args.target:
                found[name] = meter.roots[0].pid
        return found

    def _find_target_processes(self) -> None:
        """CPU meters for --target: the pids given, else local processes found by name."""
        found = (
            ("api", "llm-stream-api", self.args.api_pids),
            ("worker", "llm-stream-worker", self.args.worker_pids),
            ("mock", "llm-stream-mockllm", self.args.mock_pids),
        )
        for key, name, pids in found:
            meter = CpuMeter.of_pids(pids) if pids else CpuMeter.by_name(name)
            if meter:
                self.meters[key] = meter
                if not pids:
                    self.notes.append(
                        f"--target: {key} CPU is that of every local '{name}' process "
                        f"({len(meter.roots)} found); --{key}-pids narrows it"
                    )
            else:
                self.notes.append(f"--target: no local '{name}' process, its CPU is not measured")

    def _cpu(self) -> dict[str, float]:
        seconds = {name: meter.seconds() for name, meter in self.meters.items()}
        host = psutil.cpu_times()
        seconds["host"] = host.user + host.nice + host.system + host.irq + host.softirq
        return seconds

    def request_fn(self, mode: str) -> loadgen.RequestFn:
        if mode == "direct":
            return loadgen.direct(self.mock_url, self.n_tokens)
        assert self.api_url is not None
        if mode == "async":
            return loadgen.chat_async(self.api_url, self.n_tokens)
        return loadgen.chat_sync(self.api_url, self.n_tokens)

    async def warm_up(self, session: aiohttp.ClientSession) -> None:
        for mode in ["direct", *self.args.modes]:
            prompts = [f"bench warmup {mode} {i}" for i in range(WARMUP_REQUESTS)]
            run = await loadgen.closed_loop(
                session,
                self.request_fn(mode),
                prompts,
                WARMUP_CONCURRENCY,
                request_timeout=self.args.request_timeout,
                deadline=self.args.scenario_timeout,
            )
            bad = [r for r in run.results if not r.correct]
            if bad:
                first = next((r.error for r in bad if r.error), "wrong answer")
                print(f"warm-up {mode}: {len(bad)}/{len(prompts)} failed ({first})", flush=True)

    async def scenario(self, session: aiohttp.ClientSession, mode: str, concurrency: int) -> dict[str, Any]:
        name = f"{mode} C={concurrency}"
        prompts = [
            f"bench {mode}-c{concurrency} {i}" for i in range(concurrency * self.args.requests_per_user)
        ]
        before = self._cpu()
        run = await loadgen.closed_loop(
            session,
            self.request_fn(mode),
            prompts,
            concurrency,
            request_timeout=self.args.request_timeout,
            deadline=self.args.scenario_timeout,
            ramp=self.args.ramp,
        )
        after = self._cpu()
        # A direct run does not go through the stack: its idle CPU would only add noise.
        skip = {"api", "worker"} if mode == "direct" else set()
        cpu = {k: after[k] - before[k] for k in after if k not in skip}
        return report.summarise(name, mode, concurrency, run.results, run.wall, self.n_tokens, cpu)

    def check_alive(self, during: str) -> None:
        """Stop the run if a process of the stack has gone: the figures would be meaningless."""
        for service in self.stack.services:
            if service.popen.poll() is not None:
                raise StackDied(
                    f"{service.name} exited with {service.popen.returncode} during {during}:\n"
                    f"{service.log_tail()}"
                )

    async def burst(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        assert self.api_url is not None
        n, concurrency = self.args.burst, self.args.burst_concurrency
        prompts = [f"bench burst {i}" for i in range(n)]
        urls: list[str | None] = [None] * n
        post_times: list[float] = []
        errors: dict[str, int] = {}
        pending = iter(range(n))
        url = f"{self.api_url}/chat/async"

        async def poster() -> None:
            for i in pending:
                sent = time.perf_counter()
                try:
                    async with asyncio.timeout(self.args.request_timeout):
                        body = orjson.dumps({"message": prompts[i]})
                        async with session.post(url, data=body, headers=loadgen.JSON_HEADERS) as r:
                            if r.status != 200:
                                raise loadgen.UpstreamError(f"HTTP {r.status}")
                            urls[i] = orjson.loads(await r.read())["stream_url"]
                    post_times.append(time.perf_counter() - sent)
                except (
                    loadgen.UpstreamError,
                    aiohttp.ClientError,
                    OSError,
                    TimeoutError,
                    ValueError,
                    KeyError,
                ) as exc:
                    kind = str(exc)[:80] or type(exc).__name__
                    errors[kind] = errors.get(kind, 0) + 1

        cpu_before = self._cpu()
        start = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(concurrency)))
        post_wall = time.perf_counter() - start
        print(f"burst: {n - sum(errors.values())} POSTs in {post_wall:.2f} s", flush=True)

        async def read(i: int) -> loadgen.Result:
            stream_url = urls[i]
            if stream_url is None:
                return loadgen.Result(error="not queued")

            async def request(session: aiohttp.ClientSession, prompt: str) -> loadgen.Result:
                result = loadgen.Result()
                parts = await loadgen.read_stream(session, self.api_url + stream_url, result, start)
                result.total = time.perf_counter() - start
                return loadgen.finish(result, prompt, self.n_tokens, parts)

            return await loadgen.guarded(session, request, prompts[i], self.args.scenario_timeout)

        read_start = time.perf_counter()
        results = await asyncio.gather(*(read(i) for i in range(n)))
        end = time.perf_counter()
        cpu = {k: v - cpu_before[k] for k, v in self._cpu().items()}
        background = max(0.0, cpu.pop("host") - sum(cpu.values())) / (end - start)
        stream_errors = [r for r in results if not r.ok and r.error != "not queued"]
        done = [r for r in results if r.ok]
        correct = [r for r in done if r.correct]
        kinds = dict(errors)
        for r in stream_errors:
            kind = (r.error or "unknown")[:80]
            kinds[kind] = kinds.get(kind, 0) + 1
        tokens = len(correct) * self.n_tokens
        return {
            "requests": n,
            "concurrency": concurrency,
            "post_errors": sum(errors.values()),
            "post_wall_s": round(post_wall, 3),
            "enqueues_per_s": round((n - sum(errors.values())) / post_wall, 1),
            "post_ms": report.distribution_ms(post_times),
            "completed": len(done),
            "correct": len(correct),
            "wrong": len(done) - len(correct),
            "stream_errors": len(stream_errors),
            "read_s": round(end - read_start, 3),
            "all_done_s": round(max((r.total for r in done if r.total is not None), default=end - start), 3),
            "error_kinds": kinds,
            "background_cores": round(background, 2),
            "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_ms_per_token": {k: round(v * 1000 / tokens, 4) if tokens else None for k, v in cpu.items()},
        }

    async def run(self) -> dict[str, Any]:
        started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        began = time.perf_counter()
        await self.start()
        scenarios: list[dict[str, Any]] = []
        burst = None
        aborted = None
        scale: dict[str, Any] = {"scenarios": [], "rss": None, "restart": None}
        cancels = None
        costs = None
        connections = max(self.args.concurrency, default=0) + self.args.burst + 100
        try:
            async with loadgen.new_session(connections) as session:
                await self.warm_up(session)
                self.check_alive("the warm-up")
                if self.args.cost_answers and self.api_url and self.args.modes:
                    # First, on a stack that nothing has loaded yet: what one answer costs.
                    costs = await cost.CostPart(
                        self, self.api_url, self._cpu, profile=self._profile_targets(), results=RESULTS
                    ).run(session)
                    self.check_alive("the cost model")
                for concurrency in self.args.concurrency:
                    direct = None
                    for mode in ["direct", *self.args.modes]:
                        summary = await self.scenario(session, mode, concurrency)
                        if mode == "direct":
                            direct = summary
                        elif direct is not None:
                            report.compare(summary, direct)
                        scenarios.append(summary)
                        print(_progress(summary), flush=True)
                        self.check_alive(summary["name"])
                        await asyncio.sleep(1)  # let the stack drain between scenarios
                if self.args.burst:
                    burst = await self.burst(session)
                    self.check_alive("the burst")
                if self.args.cancel_running:
                    cancels = await cancel.CancelPart(self).run()
                    print(_cancel_progress(cancels), flush=True)
                if self.args.scale_out:
                    # The main stack would only add idle CPU to the scale-out figures.
                    self.stack.stop(self.main_services)
                    direct = next(
                        (
                            s
                            for s in scenarios
                            if s["mode"] == "direct" and s["concurrency"] == self.args.scale_out_concurrency
                        ),
                        None,
                    )
                    await self.scale_out_part(session, direct, scale)
        except StackDied as exc:
            # Keep what was measured; the scenario during which it happened is not trustworthy.
            aborted = str(exc)
            self.notes.append(f"Run aborted: {aborted.splitlines()[0].rstrip(':')}")
        busy = [
            s["name"] for s in [*scenarios, *scale["scenarios"]] if s.get("background_cores", 0) > BUSY_CORES
        ]
        if burst and burst["background_cores"] > BUSY_CORES:
            busy.append("burst")
        if cancels and (cancels.get("background_cores") or 0) > BUSY_CORES:
            busy.append("the cancels")
        for key, label in (("rss", "the buffered answers"), ("restart", "the restart")):
            if (part := scale[key]) and (part.get("background_cores") or 0) > BUSY_CORES:
                busy.append(label)
        if busy:
            self.notes.append(
                f"Other programs used more than {BUSY_CORES} of a core during {', '.join(busy)}: "
                "those figures are disturbed."
            )
        targets = [t for s in scenarios for t in report.scenario_targets(s)]
        if burst:
            targets += report.burst_targets(burst)
        targets += report.scale_out_targets(scale)
        targets += report.cancel_targets(cancels)
        targets += report.cost_targets(costs)
        return {
            "run_id": self.run_id,
            "started_at": started_at,
            "duration_s": round(time.perf_counter() - began, 1),
            "machine": report.machine_info(await rabbitmq_version(self.args.amqp_url)),
            "config": {
                "command": " ".join(["uv run python bench/run.py", *sys.argv[1:]]),
                "commit": commit(),
                "mock": self.mock_config,
                "stack": self._stack_description(),
                "requests_per_user": self.args.requests_per_user,
                "api_url": self.api_url,
                "mock_url": self.mock_url,
            },
            "scenarios": scenarios,
            "burst": burst,
            "cancel": cancels,
            "cost": costs,
            "scale_out": scale if (scale["scenarios"] or scale["rss"] or scale["restart"]) else None,
            "targets": [t.as_dict() for t in targets],
            "notes": self.notes,
            "aborted": aborted,
        }

    async def scale_out_part(
        self, session: aiohttp.ClientSession, direct: dict[str, Any] | None, out: dict[str, Any]
    ) -> None:
        """Scale-out scenarios, then buffered-answer RSS, then the restart with history.

        Results are added to ``out`` as they come, so an abort keeps what was measured.
        """
        part = scaleout.ScaleOut(self)
        if scaleout.find_haproxy() is None:
            raise RuntimeError(f"the scale-out part needs HAProxy: {scaleout.HAPROXY_INSTALL}")
        largest = max(self.args.scale_out)
        steady = None
        for replicas in self.args.scale_out:
            group = await part.start_group(f"r{replicas}", replicas, idle=True, balancer=True)
            try:
                await part.warm_up(session, group.url, group.label)
                summary = await part.scenario(session, group, direct)
                out["scenarios"].append(summary)
                print(_progress(summary) + _replica_progress(summary), flush=True)
                part.check_alive(group, summary["name"])
                if replicas == largest:
                    steady = summary
            finally:
                part.stop_group(group)
            await asyncio.sleep(1)
        if self.args.rss_answers:
            out["rss"] = await part.rss(session)
            r = out["rss"]
            print(
                f"buffered answers: {r['correct']}/{r['answers']} correct, RSS "
                f"{r['rss_before_mb']} -> {r['rss_after_mb']} MB, {r['kb_per_answer']} KB per answer",
                flush=True,
            )
        if self.args.history_s:
            # The load of the closed loop: C users at one answer each per answer time, which is
            # what direct measures; the stack's own rate would shrink the history when it is slow.
            source = direct or steady
            rate = source["throughput_rps"] if source else DEFAULT_RATE
            try:
                r = await part.restart(session, largest, rate, steady)
            except Exception as exc:  # the last part: what was measured before it is kept
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                self.notes.append(f"The restart part did not complete ({reason}); it is not reported.")
                print(f"restart: not measured ({reason})", flush=True)
                return
            out["restart"] = r
            print(
                f"restart: ready {r['ready_s']} s after start; TTFT steady p99 "
                f"{r['steady_ttft_ms']['p99']} ms, after the restart max {r['after_ttft_ms']['max']} "
                f"ms ({r['after_above_steady_p99']} of {r['after_requests']} above)",
                flush=True,
            )

    def _stack_description(self) -> str:
        a = self.args
        if a.direct_only:
            return "not run (--direct-only)"
        if a.target:
            return f"running at {a.target}"
        if a.only == "scale-out":
            return (
                f"scale-out only: R API processes behind HAProxy (R = {', '.join(map(str, a.scale_out))}) "
                f"+ 1 idle, {a.workers} worker process(es) x {a.worker_concurrency} concurrent "
                f"generations per stack, LOG_LEVEL={a.log_level}"
            )
        if a.only == "cancel":
            return (
                f"cancel only: 1 API process, 1 worker process x {a.cancel_running} concurrent "
                f"generations, LOG_LEVEL={a.log_level}"
            )
        return (
            f"{a.api_workers} API process(es), {a.workers} worker process(es) x "
            f"{a.worker_concurrency} concurrent generations, LOG_LEVEL={a.log_level}"
        )


def _cancel_progress(c: dict[str, Any]) -> str:
    close = c["upstream_close_ms"]
    return (
        f"cancel: {c['running']} running, upstream closed p50 {close['p50']} p95 {close['p95']} "
        f"p99 {close['p99']} max {close['max']} ms, {c['within_limit']}/{c['running']} within "
        f"{c['limit_ms']} ms; {c['queued']} queued, {c['queued_reached_llm']} reached the LLM"
    )


def _replica_progress(s: dict[str, Any]) -> str:
    pr = s["per_replica"]
    idle = [r for r in pr["replicas"] if r["role"] == "idle"]
    text = f" | API CPU {pr['api_cpu_ms_per_token']} ms/token"
    if idle:
        text += f", idle replica {idle[0]['cpu_us_per_unserved_token']} us/token"
    return text


def _progress(s: dict[str, Any]) -> str:
    line = (
        f"{s['name']:>14}: {s['completed']}/{s['requests']} done, {s['wrong']} wrong, "
        f"{s['errors']} errors, {s['throughput_rps']:.1f} req/s, "
        f"TTFT p50 {s['ttft_ms']['p50']} p99 {s['ttft_ms']['p99']} ms"
    )
    if "post_ms" in s:
        line += f", POST p50 {s['post_ms']['p50']} p99 {s['post_ms']['p99']} ms"
    if vs := s.get("vs_direct"):
        line += (
            f" | x{vs['throughput_ratio']} of direct, TTFT overhead p50 "
            f"{vs['ttft_overhead_ms']['p50']} p99 {vs['ttft_overhead_ms']['p99']} ms"
        )
    return line


def commit() -> str | None:
    """The checked-out commit, ``-dirty`` if files differ from it."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=10"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_loop(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def clean_up(args: argparse.Namespace, stack: Stack) -> None:
    """Stop the processes and delete the run's queues; a second Ctrl-C does not cut it short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if stack.services:
            print("stopping the stack ...", file=sys.stderr, flush=True)
        stack.stop()
        topologies = list(stack.topologies)
        if not args.target and (args.modes or args.burst):
            topologies.insert(0, broker_names(stack.run_id))
        for names in topologies:
            try:
                leftovers = run_loop(delete_topology(args.amqp_url, names))
            except (OSError, RuntimeError, TimeoutError) as exc:
                leftovers = [f"the queues of {names['TASK_QUEUE'].removesuffix('.tasks')} ({exc})"]
            for leftover in leftovers:
                print(f"could not delete {leftover}", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    signal.signal(signal.SIGTERM, terminate)
    if args.only == "cluster-intake":  # brokers and stacks of its own
        return cluster.main(args, Bench, commit())
    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(2)
    log_dir = Path(tempfile.mkdtemp(prefix=f"llm-stream-bench-{run_id}-"))
    stack = Stack(run_id, log_dir)
    print(f"run {run_id}: process logs in {log_dir}", flush=True)
    try:
        result = run_loop(Bench(args, stack).run())
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        clean_up(args, stack)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    text = report.markdown(result)
    (RESULTS / f"{args.out}.md").write_text(text)
    print("\n" + text)
    peers_json = RESULTS / "peers.json"  # bench/peers.py's figures, drawn beside this run's
    peers = charts.load([peers_json]) if peers_json.exists() else None
    for path in charts.render(result, RESULTS, charts.chart_prefix(args.out), peers):
        print(f"written: {path}")
    print(f"written: {RESULTS / args.out}.json and .md")
    if result["aborted"]:
        print(f"benchmark aborted: {result['aborted']}", file=sys.stderr)
        return 2
    unmet = [t for t in result["targets"] if not t["met"]]
    return 1 if args.check and unmet else 0


if __name__ == "__main__":
    sys.exit(main())
