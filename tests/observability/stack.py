"""Real processes for the observability tests: the mock LLM, the API, workers and Prometheus.

Each process runs from the workspace virtualenv's entry points (or from PATH for Prometheus) in
its own session, with its output in a log file, and receives SIGTERM if the test process dies
(Linux ``PR_SET_PDEATHSIG``). The broker is the run's (``tests/conftest.py``, the
``rabbitmq`` fixture). Queue and exchange names carry a per-test id so that nothing
another test or a local run does on the same broker can interfere; they are deleted at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import psutil
import pytest

BIN = Path(sys.executable).parent
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_client(**kwargs) -> httpx.Client:
    """A client that ignores proxy settings: every address here is local."""
    return httpx.Client(trust_env=False, timeout=10.0, **kwargs)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(frozen=True, slots=True)
class Topology:
    """Broker object names of one test, as the services' environment variables."""

    prefix: str

    @classmethod
    def new(cls) -> Topology:
        return cls(f"obs.{uuid.uuid4().hex[:12]}")

    @property
    def task_queue(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def env(self) -> dict[str, str]:
        return {
            "TASK_QUEUE": self.task_queue,
            "EVENTS_STREAM": f"{self.prefix}.events",
            "CANCELS_STREAM": f"{self.prefix}.cancels",
            "LIVE_EXCHANGE": f"{self.prefix}.live",
            "PRESENCE_EXCHANGE": f"{self.prefix}.presence",
            "WORKERS_EXCHANGE": f"{self.prefix}.workers",
            "DEAD_LETTER_EXCHANGE": f"{self.prefix}.dlx",
            "DEAD_LETTER_QUEUE": f"{self.prefix}.dead",
        }

    async def delete(self, amqp_url: str) -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            for queue in ("TASK_QUEUE", "EVENTS_STREAM", "CANCELS_STREAM", "DEAD_LETTER_QUEUE"):
                channel = await connection.channel()  # a failed delete closes the channel
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(self.env[queue])
            exchanges = ("LIVE_EXCHANGE", "PRESENCE_EXCHANGE", "WORKERS_EXCHANGE", "DEAD_LETTER_EXCHANGE")
            for exchange in exchanges:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(self.env[exchange])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.popen.poll() is None else f"exited with {self.popen.returncode}"
        return f"--- {self.name} ({state}), {self.log}:\n{self.log_tail()}"

    def stop(self) -> None:
        """SIGTERM to the process's group (uvicorn's worker processes too), then SIGKILL.

        Signals go to the group only while its leader runs (so the group id is still ours);
        descendants that outlive the leader are killed one by one, by identity.
        """
        if self.stopped:
            return
        self.stopped = True
        if self.popen.poll() is not None:
            return
        try:
            family = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_S)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil refuses if the pid now belongs to another process


@dataclass
class Processes:
    """The processes one test started; ``stop_all`` stops every one of them."""

    log_dir: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        process = Process(name, popen, log)
        self.started.append(process)
        return process

    def service(self, name: str, program: str, env: dict[str, str]) -> Process:
        return self.start(name, [str(BIN / program)], env)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()

    def report(self) -> str:
        return "\n".join(process.describe() for process in self.started)


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, processes: Processes, interval: float = 0.2
) -> None:
    """Poll ``check`` until it holds; fail with every process's log if it does not in time."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes.started:
            if process.popen.poll() is not None:
                pytest.fail(f"{process.name} exited while waiting for {what}\n{processes.report()}")
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{processes.report()}")
        time.sleep(interval)


def wait_http_ok(url: str, processes: Processes, timeout: float = 30.0) -> None:
    with http_client() as client:
        wait_until(url, lambda: client.get(url).status_code == 200, timeout, processes)
