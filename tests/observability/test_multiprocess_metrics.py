"""With UVICORN_WORKERS=2 the kernel spreads requests over two processes; /metrics, whichever
process serves it, must count every request exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from support.brokers import Broker

from .stack import Processes, Topology, free_port, http_client, wait_http_ok
from .tools import check_metrics

pytestmark = pytest.mark.observability

ROUTE = "/chat/async"
BATCH = 30  # requests per round, half of them refused (422)
MIN_REQUESTS = 60
MAX_REQUESTS = 300
CONCURRENCY = 10
SETTLE_S = 5.0


@dataclass
class MultiprocessAPI:
    url: str
    pid: int
    topology: Topology

    def worker_processes(self) -> list[psutil.Process]:
        """uvicorn's worker processes (not multiprocessing's resource tracker)."""
        return [
            child
            for child in psutil.Process(self.pid).children(recursive=True)
            if any("spawn_main" in part for part in child.cmdline())
        ]

    def metrics_dir(self) -> Path:
        dirs = {Path(child.environ()["PROMETHEUS_MULTIPROC_DIR"]) for child in self.worker_processes()}
        assert len(dirs) == 1, f"uvicorn workers disagree on PROMETHEUS_MULTIPROC_DIR: {dirs}"
        return dirs.pop()


@pytest.fixture(scope="module")
def api(processes: Processes, rabbitmq: Broker) -> Iterator[MultiprocessAPI]:
    topology = Topology.new()
    port = free_port()
    process = processes.service(
        "api-2-workers",
        "llm-stream-api",
        {
            **topology.env,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "UVICORN_WORKERS": "2",
            "RABBIT_MQ": rabbitmq.amqp_url,
            "RABBITMQ_MANAGEMENT_URL": rabbitmq.management_url or "",
            "PROMETHEUS_MULTIPROC_DIR": "",  # left to llm-stream-api, as in production
        },
    )
    url = f"http://127.0.0.1:{port}"
    started = MultiprocessAPI(url, process.popen.pid, topology)
    metrics_dir = None
    try:
        wait_http_ok(f"{url}/health/full", processes, timeout=60)
        yield started
    finally:
        # llm-stream-api leaves its metrics directory behind: find it while its processes run.
        with contextlib.suppress(psutil.Error, AssertionError):
            metrics_dir = started.metrics_dir()
        process.stop()
        asyncio.run(topology.delete(rabbitmq.amqp_url))
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def route_total(exposition: str, metric: str, route: str) -> float:
    """Sum of ``metric`` over every label set with ``route``."""
    total = 0.0
    for line in exposition.splitlines():
        match = re.match(rf"{metric}\{{(.*)\}} (\S+)$", line)
        if match and f'route="{route}"' in match[1]:
            total += float(match[2])
    return total


def served_per_process(metrics_dir: Path) -> dict[int, float]:
    """Requests to ROUTE that each process recorded, from its own multiprocess file."""
    served = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        served[pid] = sum(
            sample.value
            for metric in MultiProcessCollector.merge([str(path)], accumulate=False)
            for sample in metric.samples
            if sample.name == "llmstream_http_requests_total" and sample.labels.get("route") == ROUTE
        )
    return served


async def send_round(url: str) -> None:
    """BATCH requests, each on a new connection, CONCURRENCY at a time."""
    limits = httpx.Limits(max_keepalive_connections=0)
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False, timeout=10) as client:

        async def one(i: int) -> None:
            body = {"message": f"count me {i}"} if i % 2 else {"message": ""}
            async with gate:
                response = await client.post(ROUTE, json=body)
            assert response.status_code == (200 if i % 2 else 422), response.text

        await asyncio.gather(*(one(i) for i in range(BATCH)))


def test_every_request_is_counted_once_across_processes(api: MultiprocessAPI) -> None:
    assert len(api.worker_processes()) == 2
    metrics_dir = api.metrics_dir()
    sent = 0
    # Rounds until both processes have served some (the kernel decides), and at least 60.
    while sent < MIN_REQUESTS or sum(1 for n in served_per_process(metrics_dir).values() if n) < 2:
        assert sent < MAX_REQUESTS, f"all requests went to one process: {served_per_process(metrics_dir)}"
        asyncio.run(send_round(api.url))
        sent += BATCH

    # A request is counted once its response has been sent, so the last few may land a moment
    # after the client has its answer: wait for them, and never accept more than were sent.
    deadline = time.monotonic() + SETTLE_S
    while (counted := sum(served_per_process(metrics_dir).values())) < sent:
        assert time.monotonic() < deadline, f"{counted} of {sent} requests counted"
        time.sleep(0.05)
    assert counted == sent, served_per_process(metrics_dir)
    # Whichever process serves the scrape, the totals are the same.
    with http_client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(6):
            exposition = client.get(f"{api.url}/metrics").text
            assert route_total(exposition, "llmstream_http_requests_total", ROUTE) == sent
            assert route_total(exposition, "llmstream_http_request_duration_seconds_count", ROUTE) == sent
            refused = re.search(
                r'^llmstream_rejected_requests_total\{reason="validation"\} (\S+)$', exposition, re.M
            )
            assert refused and float(refused[1]) == sent / 2


def test_promtool_accepts_the_multiprocess_exposition(api: MultiprocessAPI) -> None:
    with http_client() as client:
        response = client.get(f"{api.url}/metrics")
    assert response.status_code == 200
    check_metrics(response.content, "the API's /metrics with UVICORN_WORKERS=2")
