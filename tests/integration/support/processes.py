"""Real llm-stream processes for the tests: start, wait until ready, signal, stop.

Every process runs ``python -m <package>`` with the test interpreter, gets a clean environment
(no llm-stream setting leaks in from the developer's shell), writes stdout and stderr to a log
file, and is registered in ``LIVE`` until it is stopped so that a failing test can show the
tail of every log (see ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx
from llm_stream_api.settings import APISettings
from llm_stream_worker.settings import WorkerSettings

# A process that is not ready (or stopped) within these fails the test. Generous defaults: a
# machine shared with other work can take a minute to start a Python process.
READY_TIMEOUT_S = float(os.environ.get("TEST_READY_TIMEOUT_S", "90"))
STOP_TIMEOUT_S = float(os.environ.get("TEST_STOP_TIMEOUT_S", "15"))
LOG_TAIL_LINES = 60

LIVE: list[Service] = []
"""Processes started and not yet stopped, oldest first."""

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nothing listens on right now (never the same one twice in a run)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _settings_names() -> frozenset[str]:
    names = {name.upper() for name in (*APISettings.model_fields, *WorkerSettings.model_fields)}
    return frozenset(names | {"RABBIT_MQ", "RABBITMQ_URL", "PROMETHEUS_MULTIPROC_DIR"})


_SETTINGS = _settings_names()
_PREFIXES = ("MOCK_", "OPENAI_", "LLM_", "RABBIT")


def clean_environ() -> dict[str, str]:
    """The test process's environment without any llm-stream or mock setting.

    pydantic-settings reads names case-insensitively, so the comparison is too.
    """
    return {
        key: value
        for key, value in os.environ.items()
        if key.upper() not in _SETTINGS and not key.upper().startswith(_PREFIXES)
    }


class Service:
    """One process of the system under test."""

    def __init__(
        self,
        name: str,
        module: str,
        env: Mapping[str, str],
        *,
        base_url: str,
        health_path: str,
        log_dir: Path,
    ) -> None:
        self.name = name
        self.module = module
        self.env = {**clean_environ(), "PYTHONUNBUFFERED": "1", **env}
        self.base_url = base_url
        """Where the process serves HTTP (the API, the mock, or a worker's metrics server)."""
        self.health_url = base_url + health_path
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._terminated = False

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<Service {self.name} pid={pid}>"

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        LIVE.append(self)
        return self

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _probe(self, client: httpx.Client) -> bool:
        try:
            return client.get(self.health_url).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> Service:
        """Poll the health URL until it answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.exited():
                    raise RuntimeError(f"{self.name} exited during start-up\n{self.tail()}")
                if self._probe(client):
                    return self
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:g}s\n{self.tail()}")

    async def wait_ready_async(self, timeout: float = READY_TIMEOUT_S) -> Service:
        """``wait_ready`` for async tests: the event loop keeps running meanwhile."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.exited():
                    raise RuntimeError(f"{self.name} exited during start-up\n{self.tail()}")
                try:
                    if (await client.get(self.health_url)).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:g}s\n{self.tail()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, once the process has ended; TimeoutError after ``timeout``."""
        assert self.proc is not None
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {timeout:g}s") from None

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM), once."""
        if self.proc is not None and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in LIVE:
            LIVE.remove(self)

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return f"({self.log_path} does not exist)"
        return "\n".join(text.splitlines()[-lines:])


def start_all(*services: Service) -> None:
    """Start several processes at once and wait until every one is ready."""
    for service in services:
        service.start()
    for service in services:
        service.wait_ready()


def stop_all(*services: Service) -> None:
    """SIGTERM every running process at once, then wait for each (SIGKILL if it lingers)."""
    for service in services:
        service.terminate()
    for service in services:
        service.stop()
