"""The faults a chaos run injects, each recording what it really did.

- :class:`WorkerKiller`: SIGKILL a random ready worker every ``interval`` seconds and start a
  new one in its place (same environment), as long as another worker is ready and a session is
  under way. On a busy machine restarts are slower than the interval, and so are the kills:
  :meth:`due` tells the load how far the kills have come, so that it keeps pace with them.
  With pools (a worker's ``LLM_POOL``) all of that holds per pool: the victim's pool keeps
  another ready worker, has a session of its own under way, and is the pool with the fewest
  kills so far among those that can lose one, so the kills alternate between the pools.
- :class:`BrokerOutage`: ``rabbitmqctl stop_app`` on the run's private node, hold it down,
  ``start_app``; a probe of the AMQP port says when the broker really went away and came back.
  It stays down until a POST has been seen refused, however slow the machine.
- The API kill is a single ``Stack.kill`` in the scenario (SIGKILL of the process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stack import Service, Stack

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 90.0
READY_POLL_S = 0.05
# How long the broker stays down at most waiting for a refused POST (then the run says so).
REFUSAL_TIMEOUT_S = 300.0


@dataclass
class Kill:
    at: float
    name: str
    pid: int
    returncode: int | None
    in_flight: int
    """Sessions accepted and not finished when the worker was killed (of its pool)."""
    pool: str = ""


@dataclass
class WorkerKiller:
    stack: Stack
    workers: list[Service]
    rng: random.Random
    in_flight: Any
    """``(pool | None) -> int``: sessions under way, of a pool or of all (to show that the kills
    land mid-answer)."""
    interval: tuple[float, float] = (1.0, 2.0)
    settle_s: float = 0.5
    """How long a session (of the victim's pool) has been under way at the least when the kill
    comes: the mock's first token comes 0.1 s after a worker is given the task."""
    kills: list[Kill] = field(default_factory=list)
    restart_failures: list[str] = field(default_factory=list)
    replacements: list[Service] = field(default_factory=list)
    """Every worker started in place of a killed one (killed since, or not)."""
    _ready: set[int] = field(default_factory=set)
    _starting: set[asyncio.Task[None]] = field(default_factory=set)

    started_at: float = field(default_factory=time.monotonic)
    waiting_for_load: bool = False
    """Ready to kill, waiting for a session under way (the load then lets one through)."""
    waiting_for: str | None = None
    """With pools: the pool of that session (None: any)."""

    def __post_init__(self) -> None:
        self._ready = {id(w) for w in self.workers}

    @staticmethod
    def pool_of(worker: Service) -> str:
        return worker.env.get("LLM_POOL", "")

    def _target_pool(self) -> str | None:
        """The pool to kill in next: one with two ready workers (one keeps serving), the fewest
        kills so far among them; None while no pool can lose a worker."""
        ready: dict[str, int] = {}
        for worker in self.workers:
            if id(worker) in self._ready:
                ready[self.pool_of(worker)] = ready.get(self.pool_of(worker), 0) + 1
        candidates = sorted(pool for pool, count in ready.items() if count >= 2)
        if not candidates:
            return None
        kills = {pool: sum(1 for k in self.kills if k.pool == pool) for pool in candidates}
        fewest = min(kills.values())
        return self.rng.choice([pool for pool in candidates if kills[pool] == fewest])

    def due(self, k: float) -> bool:
        """Whether ``int(k)`` kills have happened: the kills themselves, not a clock, pace the
        load, so a slow machine slows both alike."""
        return len(self.kills) >= int(k)

    async def run(self, stop: asyncio.Event) -> None:
        self.started_at = time.monotonic()
        generation = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*self.interval))
            if stop.is_set():
                break
            # Keep one worker (of each pool) serving (a crash loop that kills every worker as
            # soon as it is ready lets nothing finish): wait for a restarted one rather than skip.
            while (pool := self._target_pool()) is None:
                if stop.is_set():
                    break
                await asyncio.sleep(READY_POLL_S)
            if pool is None:
                break
            # A kill lands mid-answer: wait for a session under way (of the pool; the load lets
            # some through whenever none is, so this wait ends), then ``settle_s`` more, so that
            # its generation has begun: killed the moment a session is accepted, a worker has
            # not been given its task yet.
            self.waiting_for = pool or None
            self.waiting_for_load = True
            while not stop.is_set():
                while self.in_flight(self.waiting_for) == 0 and not stop.is_set():  # noqa: ASYNC110 (a count)
                    await asyncio.sleep(READY_POLL_S)
                self.waiting_for_load = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settle_s)
                if self.in_flight(self.waiting_for) > 0:
                    break
                self.waiting_for_load = True
            if stop.is_set():
                break
            victim = self.rng.choice(
                [w for w in self.workers if id(w) in self._ready and self.pool_of(w) == pool]
            )
            in_flight = self.in_flight(self.waiting_for)
            self.stack.kill(victim)
            self._ready.discard(id(victim))
            self.workers.remove(victim)
            self.kills.append(Kill(
                time.monotonic(), victim.name, victim.popen.pid, victim.popen.returncode, in_flight, pool
            ))
            generation += 1
            base = victim.name.split(".", 1)[0]
            replacement = self.stack.restart(victim, f"{base}.{generation}")
            self.workers.append(replacement)
            self.replacements.append(replacement)
            task = asyncio.create_task(self._wait_ready(replacement))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        for task in list(self._starting):
            task.cancel()

    async def _wait_ready(self, worker: Service) -> None:
        try:
            await self.stack.wait_ready([worker], timeout=READY_TIMEOUT_S)
        except RuntimeError as exc:
            self.restart_failures.append(f"{worker.name}: {exc}"[:500])
            return
        self._ready.add(id(worker))

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "worker_kills": len(self.kills),
            "killed_by_sigkill": sum(1 for k in self.kills if k.returncode == -9),
            "kills_mid_answer": sum(1 for k in self.kills if k.in_flight > 0),
            "in_flight_at_kills": [k.in_flight for k in self.kills],
            "restart_failures": self.restart_failures,
        }
        pools = sorted({self.pool_of(w) for w in self.workers} | {k.pool for k in self.kills})
        if any(pools):
            facts["kills_by_pool"] = {pool: sum(1 for k in self.kills if k.pool == pool) for pool in pools}
        return facts

    def pool_facts(self, pool: str) -> dict[str, Any]:
        mine = [k for k in self.kills if k.pool == pool]
        return {"worker_kills": len(mine), "kills_mid_answer": sum(1 for k in mine if k.in_flight > 0)}


def amqp_answers(port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a broker answers the AMQP protocol header on ``port`` (its Connection.Start)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(AMQP_HEADER)
            return sock.recv(7)[:1] == b"\x01"  # a method frame
    except OSError:
        return False


@dataclass
class BrokerOutage:
    """One restart of a :class:`RestartableNode` (``tests/integration/support``)."""

    node: Any
    hold_s: float
    stop_called_at: float | None = None
    down_at: float | None = None
    start_called_at: float | None = None
    up_at: float | None = None
    stop_app_s: float | None = None
    start_app_s: float | None = None
    went_down: asyncio.Event = field(default_factory=asyncio.Event)
    came_back: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return int(self.node.node.amqp_port)

    async def run(self, refused: Callable[[], bool] = lambda: True) -> None:
        """Stop the broker, keep it down ``hold_s`` from the moment it went away and until
        ``refused()`` holds (a POST was seen refused meanwhile), then start it."""
        self.stop_called_at = time.monotonic()
        watch = asyncio.create_task(self._watch(want_up=False))
        try:
            await asyncio.to_thread(self.node.stop_app)
            self.stop_app_s = time.monotonic() - self.stop_called_at
            await asyncio.wait_for(watch, READY_TIMEOUT_S)
        finally:
            watch.cancel()
        assert self.down_at is not None
        await asyncio.sleep(max(0.0, self.down_at + self.hold_s - time.monotonic()))
        # On a slow machine the API may take longer to notice the loss: wait for the evidence.
        deadline = time.monotonic() + REFUSAL_TIMEOUT_S
        while not refused() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(PROBE_EVERY_S)
        self.start_called_at = time.monotonic()
        watch = asyncio.create_task(self._watch(want_up=True))
        try:
            await asyncio.to_thread(self.node.start_app)
            self.start_app_s = time.monotonic() - self.start_called_at
            await asyncio.wait_for(watch, READY_TIMEOUT_S)
        finally:
            watch.cancel()

    async def _watch(self, *, want_up: bool) -> None:
        # Polling a port: there is no event to wait for.
        while await asyncio.to_thread(amqp_answers, self.port) != want_up:  # noqa: ASYNC110
            await asyncio.sleep(PROBE_EVERY_S)
        if want_up:
            self.up_at = time.monotonic()
            self.came_back.set()
        else:
            self.down_at = time.monotonic()
            self.went_down.set()

    def facts(self) -> dict[str, Any]:
        down = self.up_at - self.down_at if self.up_at and self.down_at else None
        return {
            "broker_down_s": round(down, 2) if down is not None else None,
            "stop_app_s": round(self.stop_app_s, 2) if self.stop_app_s else None,
            "start_app_s": round(self.start_app_s, 2) if self.start_app_s else None,
        }
