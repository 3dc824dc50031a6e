"""The API, worker and mock LLM images, run as the chart runs them, stream an answer end to end.

Each container gets exactly what the rendered chart gives its pod: env from the ConfigMaps and
the Secret, uid 10001, a read-only root filesystem, every capability dropped, no privilege
escalation, /tmp as a size-limited tmpfs (the emptyDir), the resource limits, the termination
grace period; readiness is the chart's own probe. See runtime.py for what is emulated and how.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from deploy.manifests import helm_template
from llm_stream_mockllm.answer import expected_answer
from llm_stream_mockllm.settings import Settings as MockSettings

from .conftest import BrokerURLs, delete_topology
from .runtime import (
    SERVICES,
    Container,
    answer_of,
    free_port,
    image_name,
    isolation_values,
    podman,
    read_stream,
    resolve_env,
    start,
    unique,
    workload,
)

pytestmark = pytest.mark.containers

# Images stay well under this: the Debian base with python3 is ~145 MB, a virtualenv ~30-80 MB.
MAX_IMAGE_BYTES = 300_000_000


@dataclass
class Stack:
    objects: list[dict]
    prefix: str
    api: Container
    worker: Container
    mock: Container
    broker: BrokerURLs

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port('http')}"


def render(broker: BrokerURLs, prefix: str, *extra: str, ports: dict[str, int] | None = None) -> list[dict]:
    """The chart with this broker, the in-chart mock LLM, free ports and names of its own;
    `extra` are more `--set` values (key=value)."""
    ports = {"mockllm.port": free_port(), "api.port": free_port(), "worker.metricsPort": free_port()} | (
        ports or {}
    )
    values = [
        f"rabbitmq.url={broker.amqp_url}",
        "mockllm.enabled=true",
        *(f"{key}={port}" for key, port in ports.items()),
        *isolation_values(prefix),
        "worker.keda.enabled=false",
        *extra,
    ]
    if broker.management_url:
        values.append(f"rabbitmq.managementUrl={broker.management_url}")
    args = [a for v in values for a in ("--set", v)]
    return list(helm_template(*args))


def cleanup(prefix: str, containers: list[Container], amqp_url: str) -> None:
    for c in containers:
        c.remove()
    delete_topology(amqp_url, prefix)


@pytest.fixture(scope="module")
def stack(images: dict[str, int], broker: BrokerURLs) -> Iterator[Stack]:
    prefix = unique("ct")
    objects = render(broker, prefix)
    started: list[Container] = []
    try:
        mock = start(objects, "mockllm", f"{prefix}-mockllm")
        started.append(mock)
        mock.wait_ready()
        worker = start(objects, "worker", f"{prefix}-worker")
        started.append(worker)
        worker.wait_ready()
        api = start(objects, "api", f"{prefix}-api")
        started.append(api)
        api.wait_ready()
        yield Stack(objects, prefix, api, worker, mock, broker)
    finally:
        cleanup(prefix, started, broker.amqp_url)


def post(base_url: str, message: str) -> str:
    response = httpx.post(f"{base_url}/chat/async", json={"message": message}, timeout=30, trust_env=False)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "queued" and body["stream_url"] == f"/stream/{body['session_id']}"
    return body["session_id"]


def test_images_are_built_small_and_non_root(images: dict[str, int]) -> None:
    for service in SERVICES:
        config = json.loads(
            podman("image", "inspect", "--format", "{{json .Config}}", image_name(service)).stdout
        )
        assert config["User"] == "10001:10001", service
        assert config["Entrypoint"] == [f"llm-stream-{service}"], service
        assert not config.get("Cmd"), service
        assert config.get("StopSignal", "SIGTERM") == "SIGTERM", service
        assert images[service] < MAX_IMAGE_BYTES, f"{service}: {images[service] / 1e6:.0f} MB"


def test_an_answer_streams_end_to_end_through_the_containers(stack: Stack) -> None:
    message = "Hello from the containers"
    session_id = post(stack.base_url, message)
    events = read_stream(stack.base_url, session_id)
    # The mock's answer is deterministic: exactly what it sent, in order, nothing lost.
    mock_env = resolve_env(stack.objects, stack.mock.spec)
    tokens = MockSettings.from_env(mock_env).tokens
    assert answer_of(events) == expected_answer(message, tokens)
    health = httpx.get(f"{stack.base_url}/health/full", timeout=10, trust_env=False).json()
    assert health["status"] == "ok" and health["rabbitmq"] == "connected"


@pytest.mark.parametrize("component", ["api", "worker", "mockllm"])
def test_containers_run_hardened_as_the_pod_spec_says(stack: Stack, component: str) -> None:
    c = {"api": stack.api, "worker": stack.worker, "mockllm": stack.mock}[component]
    assert c.state()["Running"]
    # uid/gid 10001, no capabilities at all, no_new_privs.
    status = c.exec("cat", "/proc/self/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"], fields["Uid"]
    assert fields["Gid"].split()[:2] == ["10001", "10001"], fields["Gid"]
    for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2", "the runtime's default seccomp filter"
    # PID 1 is the service's own entry point (it receives the kubelet's SIGTERM).
    cmdline = c.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert any(part.endswith(f"llm-stream-{component}") for part in cmdline[:2]), cmdline
    # Read-only root filesystem; /tmp (the emptyDir) is the only writable place.
    for path in ("/app/x", "/x", "/app/venv/x"):
        denied = c.exec("sh", "-c", f"echo x > {path}")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, path
    assert c.exec("sh", "-c", "echo x > /tmp/x && cat /tmp/x").stdout.strip() == "x"
    mounts = c.exec("cat", "/proc/mounts").stdout.splitlines()
    (root,) = [m for m in mounts if m.split()[1] == "/"]
    assert root.split()[3].startswith("ro"), root
    (tmp,) = [m for m in mounts if m.split()[1] == "/tmp"]
    assert tmp.split()[2] == "tmpfs" and "size=65536k" in tmp, tmp


@pytest.mark.parametrize("component", ["api", "mockllm"])
def test_sigterm_stops_the_api_and_the_mock_cleanly(stack: Stack, component: str) -> None:
    """PID 1 gets no default signal handler: the entry point must handle SIGTERM itself, or
    the runtime kills it after the grace period (exit 137). Runs after the tests above that
    use the same containers."""
    c = {"api": stack.api, "mockllm": stack.mock}[component]
    began = time.monotonic()
    state = c.stop(20)
    took = time.monotonic() - began
    assert state["ExitCode"] == 0 and took < 20, f"exit {state['ExitCode']} after {took:.1f} s:\n{c.logs()}"


def test_sigterm_lets_the_in_flight_generation_finish(images: dict[str, int], broker: BrokerURLs) -> None:
    """SHUTDOWN_GRACE_S as the chart sets it (the LLM timeout): the worker, PID 1, stops consuming
    on SIGTERM, finishes the answer it is generating and exits 0, well within the grace period."""
    prefix = unique("ct-drain")
    objects = render(broker, prefix)
    started: list[Container] = []
    try:
        mock = start(objects, "mockllm", f"{prefix}-mockllm")
        started.append(mock)
        mock.wait_ready()
        worker = start(objects, "worker", f"{prefix}-worker")
        started.append(worker)
        worker.wait_ready()
        api = start(objects, "api", f"{prefix}-api")
        started.append(api)
        api.wait_ready()
        base_url = f"http://127.0.0.1:{api.port('http')}"

        message = "[[mock:tokens=40]] [[mock:tps=10]] drain me"  # about 4 s of generation
        session_id = post(base_url, message)
        with httpx.Client(base_url=base_url, timeout=60, trust_env=False) as client:
            with client.stream("GET", f"/stream/{session_id}") as response:
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                assert "chunk" in first  # the generation is in flight
                began = time.monotonic()
                state = worker.stop()  # SIGTERM, SIGKILL only after the chart's grace period
                stopped_after = time.monotonic() - began
                rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        events = [json.loads(first[5:]), *rest]
        assert answer_of(events) == expected_answer(message, 40)
        assert state["ExitCode"] == 0 and not state["OOMKilled"], worker.logs()
        grace = workload(objects, "worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert stopped_after < grace, f"stopped after {stopped_after:.1f} s: killed, not drained"
    finally:
        cleanup(prefix, started, broker.amqp_url)


def test_sigterm_past_the_grace_requeues_and_another_worker_completes(
    images: dict[str, int], broker: BrokerURLs
) -> None:
    """worker.shutdownGraceSeconds=1: a generation longer than that is requeued on SIGTERM, not
    lost; a second worker container takes the task and the client still reads the whole answer,
    once, without a gap."""
    prefix = unique("ct-requeue")
    objects = render(broker, prefix, "worker.shutdownGraceSeconds=1")
    started: list[Container] = []
    try:
        mock = start(objects, "mockllm", f"{prefix}-mockllm")
        started.append(mock)
        mock.wait_ready()
        first_worker = start(objects, "worker", f"{prefix}-worker-1")
        started.append(first_worker)
        first_worker.wait_ready()
        api = start(objects, "api", f"{prefix}-api")
        started.append(api)
        api.wait_ready()
        base_url = f"http://127.0.0.1:{api.port('http')}"

        message = "[[mock:tokens=60]] [[mock:tps=10]] requeue me"  # about 6 s of generation
        session_id = post(base_url, message)
        with httpx.Client(base_url=base_url, timeout=90, trust_env=False) as client:
            with client.stream("GET", f"/stream/{session_id}") as response:
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                state = first_worker.stop()
                assert state["ExitCode"] == 0, first_worker.logs()
                # The second replica (same pod spec, its own metrics port on the host network).
                second = render(
                    broker,
                    prefix,
                    "worker.shutdownGraceSeconds=1",
                    ports={"mockllm.port": mock.port("http"), "api.port": api.port("http")},
                )
                second_worker = start(second, "worker", f"{prefix}-worker-2")
                started.append(second_worker)
                rest = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        events = [json.loads(first[5:]), *rest]
        assert answer_of(events) == expected_answer(message, 60), first_worker.logs()
        # The answer was finished by the second worker: the first one requeued it.
        metrics_port = second_worker.port("metrics")
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10, trust_env=False).text
        completed = re.search(r'^llmstream_worker_tasks_total\{outcome="completed"\} (\S+)$', metrics, re.M)
        assert completed and float(completed.group(1)) == 1, metrics[-3000:]
    finally:
        cleanup(prefix, started, broker.amqp_url)
