"""Start, watch and stop the processes under test: mock LLM, API, workers.

Each process runs from the workspace virtualenv's entry points (not through ``uv run``, so the
measured process is the Python process itself), in its own session, with its output in a log
file, and receives SIGTERM if the benchmark process dies (Linux ``PR_SET_PDEATHSIG``). Queue
and exchange names carry the run id so nothing from another run can interfere, and they are
deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

BIN = Path(sys.executable).parent
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StackDied(RuntimeError):
    """A process of the stack exited during the run."""


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    program: str = ""
    args: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.perf_counter)
    ready_s: float | None = None
    """Seconds from the start of the process to its health URL's first 200 (to ``READY_POLL_S``)."""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def broker_names(run_id: str, tool: str = "bench") -> dict[str, str]:
    """The isolated topology of one run, as environment variables (names ``<tool>.<run id>.*``)."""
    prefix = f"{tool}.{run_id}"
    return {
        "TASK_QUEUE": f"{prefix}.tasks",
        "EVENTS_STREAM": f"{prefix}.events",
        "CANCELS_STREAM": f"{prefix}.cancels",
        "LIVE_EXCHANGE": f"{prefix}.live",
        "PRESENCE_EXCHANGE": f"{prefix}.presence",
        "WORKERS_EXCHANGE": f"{prefix}.workers",
        "DEAD_LETTER_EXCHANGE": f"{prefix}.dlx",
        "DEAD_LETTER_QUEUE": f"{prefix}.dead",
    }


@dataclass
class Stack:
    run_id: str
    log_dir: Path
    services: list[Service] = field(default_factory=list)
    topologies: list[dict[str, str]] = field(default_factory=list)
    """Broker names of the run's other stacks (scale-out), deleted at the end like the main one's."""

    def start(
        self,
        name: str,
        program: str,
        env: dict[str, str],
        health_url: str,
        args: Iterable[str] = (),
    ) -> Service:
        """Start ``program`` (a workspace entry point, or an absolute path) with ``args``."""
        log = self.log_dir / f"{name}.log"
        executable = program if os.path.isabs(program) else str(BIN / program)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [executable, *args],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        service = Service(name, popen, log, health_url, env, program, tuple(args))
        self.services.append(service)
        return service

    def restart(self, service: Service, name: str) -> Service:
        """Start the same program again, same environment (so the same port), logging to ``name``."""
        return self.start(name, service.program, service.env, service.health_url, service.args)

    def kill(self, service: Service) -> None:
        """SIGKILL the process group, as a crash or an OOM kill would end it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.popen.pid, signal.SIGKILL)
        service.popen.wait()
        self.services.remove(service)

    async def wait_ready(self, services: Iterable[Service], timeout: float = 60.0) -> None:
        """Poll every health URL until it answers 200; fail fast if a process exits."""
        pending = list(services)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while pending:
                for service in list(pending):
                    if service.popen.poll() is not None:
                        raise RuntimeError(
                            f"{service.name} exited with {service.popen.returncode}:\n{service.log_tail()}"
                        )
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.get(service.health_url) as response:
                            if response.status == 200:
                                pending.remove(service)
                                service.ready_s = time.perf_counter() - service.started_at
                if pending and time.monotonic() > deadline:
                    names = ", ".join(s.name for s in pending)
                    tails = "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in pending)
                    raise RuntimeError(f"not ready after {timeout:.0f} s: {names}\n{tails}")
                if pending:
                    await asyncio.sleep(READY_POLL_S)

    def stop(self, services: Iterable[Service] | None = None) -> None:
        """SIGTERM the process groups (default: every one we started), then SIGKILL what is left."""
        chosen = list(self.services if services is None else services)
        for service in chosen:
            if service.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in chosen:
            try:
                service.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.popen.pid, signal.SIGKILL)
                service.popen.wait()
        self.services = [s for s in self.services if s not in chosen]


class CpuMeter:
    """User + system CPU seconds of a set of processes and all their descendants."""

    def __init__(
        self, roots: Iterable[psutil.Process], *, descendants: bool = True, precise: bool = False
    ) -> None:
        self.roots = list(roots)
        self.descendants = descendants
        self.precise = precise
        self._seen: dict[int, float] = {}

    @classmethod
    def of_pids(cls, pids: Iterable[int], *, precise: bool = False) -> CpuMeter:
        """``precise``: nanoseconds on CPU from ``/proc/PID/task/*/schedstat`` (Linux), instead of
        the 10 ms ticks of user + system time; for a process that should use almost nothing."""
        return cls((psutil.Process(pid) for pid in pids), precise=precise)

    @classmethod
    def by_name(cls, name: str) -> CpuMeter:
        """Processes called ``name`` (``beam.smp``) or whose command line mentions it."""
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if proc.info["name"] == name or name in cmdline:
                found.append(proc)
        return cls(found)

    def seconds(self) -> float:
        """Total so far. A process that ended keeps its last reading."""
        for root in self.roots:
            with contextlib.suppress(psutil.Error):
                family = root.children(recursive=True) if self.descendants else []
                for proc in [root, *family]:
                    with contextlib.suppress(psutil.Error):
                        on_cpu = _schedstat_seconds(proc.pid) if self.precise else None
                        if on_cpu is None:
                            times = proc.cpu_times()
                            on_cpu = times.user + times.system
                        self._seen[proc.pid] = on_cpu
        return sum(self._seen.values())

    def __bool__(self) -> bool:
        return bool(self.roots)


def broker_meter(amqp_url: str) -> CpuMeter:
    """The broker: the process listening on the URL's port, not every ``beam.smp`` of the
    machine (tests start private RabbitMQ nodes); every ``beam.smp`` if none is found."""
    port = urllib.parse.urlsplit(amqp_url).port or 5672
    pids: set[int] = set()
    with contextlib.suppress(psutil.Error):
        pids = {
            c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid
        }
    return CpuMeter.of_pids(sorted(pids)) if pids else CpuMeter.by_name("beam.smp")


def _schedstat_seconds(pid: int) -> float | None:
    """Time on CPU of the live threads of ``pid`` (first field of each thread's schedstat, ns)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9 if tasks else None


async def delete_topology(amqp_url: str, names: dict[str, str]) -> list[str]:
    """Delete the run's queues and exchanges; return what could not be deleted."""
    import aio_pika  # the workspace has it (mqcommon); imported late to keep start-up light

    failed = []
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        queue_keys = ("TASK_QUEUE", "EVENTS_STREAM", "CANCELS_STREAM", "DEAD_LETTER_QUEUE")
        queues = [names[key] for key in queue_keys]
        tasks = names["TASK_QUEUE"]
        extra = [f"{tasks}.log", f"{tasks}.watermarks", f"{names['DEAD_LETTER_QUEUE']}.notices"]
        for queue in [*queues, *extra]:
            channel = await connection.channel()
            try:
                await channel.queue_delete(queue)
            except aio_pika.exceptions.AMQPError as exc:
                failed.append(f"{queue}: {exc}")
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.close()
        exchange_keys = ("LIVE_EXCHANGE", "PRESENCE_EXCHANGE", "WORKERS_EXCHANGE", "DEAD_LETTER_EXCHANGE")
        exchanges = [names[key] for key in exchange_keys]
        for exchange in [*exchanges, f"{tasks}.intake", f"{tasks}.positions"]:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(exchange)
            except aio_pika.exceptions.AMQPError as exc:
                failed.append(f"{exchange}: {exc}")
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.close()
    return failed


async def rabbitmq_version(amqp_url: str) -> str | None:
    import aio_pika

    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
    except (OSError, aio_pika.exceptions.AMQPError):
        return None
    async with connection:
        properties = connection.transport.connection.server_properties
        version = properties.get("version")
        return version.decode() if isinstance(version, bytes) else version


def cpu_seconds(meters: dict[str, CpuMeter]) -> dict[str, float]:
    """CPU seconds of each meter's processes so far, and of the whole host (``"host"``)."""
    seconds = {name: meter.seconds() for name, meter in meters.items()}
    host = psutil.cpu_times()
    seconds["host"] = host.user + host.nice + host.system + host.irq + host.softirq
    return seconds


def background_cores(meters: dict[str, CpuMeter], before: dict[str, float], wall: float) -> float | None:
    """Cores used since ``before`` by processes not in ``meters`` (other programs)."""
    after = cpu_seconds(meters)
    delta = {k: after[k] - before[k] for k in after}
    host = delta.pop("host")
    return round(max(0.0, host - sum(delta.values())) / wall, 2) if wall else None

