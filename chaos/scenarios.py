"""The three scenarios: load through a real stack while one kind of fault hits it.

Each scenario starts its own API and worker processes (``bench/stack.py``) on the run's
private RabbitMQ node, with queue and exchange names of its own (``chaos.<run id>-<scenario>.*``),
drives load with :mod:`clients`, injects its fault (:mod:`faults`), waits until every accepted
session has ended or passed its deadline, stops its processes and hands the observations to
:mod:`oracle`. ``problems`` lists the ways the fault itself did not happen as planned (then the
run proves nothing, and fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx

from clients import Answer, Clients, finished, position
from faults import BrokerOutage, WorkerKiller
from oracle import Post, Session, Tally, tally
from stack import Service, Stack, broker_names, free_port

KINDS = ("sse", "sync", "openai")
UNDER_WAY_TIMEOUT_S = 60.0
PROBE_LIMIT_S = 600.0
POLL_S = 0.05


@dataclass
class Options:
    """One scenario's size and pace (``run.py`` sets the defaults, full or short)."""

    sessions: int
    users: int
    answer: Answer
    deadline_s: float
    time_limit_s: float
    workers: int = 2
    mix: dict[str, float] = field(default_factory=lambda: {"sse": 6, "sync": 3, "openai": 1})
    retry_s: float = 0.5
    max_reads: int = 20
    post_timeout_s: float = 30.0
    # workers
    kill_every: tuple[float, float] = (1.0, 2.0)
    min_kills: int = 1
    # broker
    outage_s: float = 10.0
    outage_after: float = 0.3
    """Fraction of the sessions accepted before the broker is stopped."""
    probe_every_s: float = 0.1


@dataclass
class Run:
    """What the scenarios of one run share: the broker node, the mock LLM, the process set."""

    run_id: str
    log_dir: Path
    stack: Stack
    node: Any
    """``RestartableNode`` (tests/integration/support/restartable_broker.py)."""
    amqp_url: str
    management_url: str
    mock_url: str
    rng: random.Random


@dataclass
class Outcome:
    scenario: str
    tally: Tally
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    logs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.tally.as_dict(),
            "facts": self.facts,
            "problems": self.problems,
            "wall_s": round(self.wall_s, 1),
            "logs": self.logs,
        }


# -- processes ---------------------------------------------------------------------------------


def _env(run: Run, names: dict[str, str]) -> dict[str, str]:
    return {
        "RABBIT_MQ": run.amqp_url,
        "RABBITMQ_MANAGEMENT_URL": run.management_url,
        "OPENAI_BASE_URL": f"{run.mock_url}/v1",
        "OPENAI_API_KEY": "chaos",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "console",
        **names,
    }


def start_api(run: Run, scenario: str, names: dict[str, str], index: int) -> Service:
    port = free_port()
    return run.stack.start(
        f"{scenario}-api{index}", "llm-stream-api",
        {**_env(run, names), "HOST": "127.0.0.1", "PORT": str(port), "UVICORN_WORKERS": "1"},
        f"http://127.0.0.1:{port}/health/full",
    )


def start_worker(run: Run, scenario: str, names: dict[str, str], index: int) -> Service:
    port = free_port()
    return run.stack.start(
        f"{scenario}-worker{index}", "llm-stream-worker",
        {
            **_env(run, names), "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(port),
            "SHUTDOWN_GRACE_S": "2",
        },
        f"http://127.0.0.1:{port}/health",
    )


def base_url(api: Service) -> str:
    return api.health_url.rsplit("/health", 1)[0]


def scenario_names(run: Run, scenario: str) -> dict[str, str]:
    return broker_names(f"{run.run_id}-{scenario}", tool="chaos")


async def start_processes(
    run: Run, scenario: str, apis: int, workers: int
) -> tuple[list[Service], list[Service]]:
    names = scenario_names(run, scenario)
    started_apis = [start_api(run, scenario, names, i) for i in range(apis)]
    started_workers = [start_worker(run, scenario, names, i) for i in range(workers)]
    await run.stack.wait_ready([*started_apis, *started_workers], timeout=120)
    return started_apis, started_workers


# -- evidence ----------------------------------------------------------------------------------

ATTEMPT = re.compile(rb"generation started.*?attempt=(\d+)")


def redelivered_generations(workers: list[Service]) -> int:
    """Generations the workers started on a task's second or later delivery (their logs)."""
    count = 0
    for worker in workers:
        with contextlib.suppress(OSError):
            count += sum(1 for m in ATTEMPT.finditer(worker.log.read_bytes()) if int(m.group(1)) > 1)
    return count


async def dead_lettered(run: Run, scenario: str) -> list[str]:
    """Session ids of the tasks in the scenario's dead-letter queue (read back, left in place)."""
    queue = scenario_names(run, scenario)["DEAD_LETTER_QUEUE"]
    url = httpx.URL(run.management_url)
    try:
        async with httpx.AsyncClient(
            base_url=str(url.copy_with(username=None, password=None)), auth=(url.username, url.password),
            timeout=10, trust_env=False,
        ) as management:
            response = await management.post(
                f"/api/queues/%2F/{quote(queue, safe='')}/get",
                json={"count": 10_000, "ackmode": "ack_requeue_true", "encoding": "auto"},
            )
    except httpx.HTTPError as exc:
        return [f"(could not read {queue}: {exc})"]
    if response.status_code != 200:
        return [f"(could not read {queue}: {response.status_code} {response.text[:100]})"]
    sids = []
    for message in response.json():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            sids.append(json.loads(message["payload"])["session_id"])
    return sids


# -- load --------------------------------------------------------------------------------------


class Tickets:
    """The sessions still to be accepted: a user takes one per POST and gives it back if refused."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.closed = False

    def take(self) -> bool:
        if self.closed or self.left <= 0:
            return False
        self.left -= 1
        return True

    def give_back(self) -> None:
        self.left += 1


def retry_pause(post: Post, rng: random.Random) -> float:
    """Honour ``Retry-After`` (with jitter, so refused users do not come back in a herd)."""
    if post.retry_after and post.retry_after.isdigit():
        return int(post.retry_after) * rng.uniform(1.0, 1.2)
    return 1.0


async def closed_loop(
    clients: Clients, urls: list[str], opts: Options, tickets: Tickets, rng: random.Random,
    *, rate: float | None = None, gate: Callable[[int], bool] | None = None,
) -> None:
    """``opts.users`` users, each asking, reading to the end and asking again, until no ticket
    is left; with ``rate``, no more than that many POSTs per second are sent in all; with
    ``gate``, the n-th POST waits until ``gate(n)`` holds."""
    kinds = [k for k in KINDS if opts.mix.get(k, 0) > 0]
    weights = [opts.mix[k] for k in kinds]
    began = time.monotonic()
    sent = 0
    ramp = opts.answer.tokens / opts.answer.tps

    async def user(k: int) -> None:
        nonlocal sent
        await asyncio.sleep(k * ramp / opts.users)
        while tickets.take():
            slot = sent
            sent += 1
            if rate:
                await asyncio.sleep(max(0.0, began + slot / rate - time.monotonic()))
            if gate is not None:
                await until(lambda n=slot: gate(n) or tickets.closed, float("inf"))
            kind = rng.choices(kinds, weights)[0]
            url = rng.choice(urls)
            outcome = await getattr(clients, kind)(url)
            if isinstance(outcome, Post):
                tickets.give_back()
                await asyncio.sleep(retry_pause(outcome, rng))

    await asyncio.gather(*(user(k) for k in range(opts.users)))


@contextlib.asynccontextmanager
async def time_limit(seconds: float, tickets: Tickets, problems: list[str]):  # type: ignore[no-untyped-def]
    """Stop sending new sessions after ``seconds`` (the load then drains)."""

    async def expire() -> None:
        await asyncio.sleep(seconds)
        tickets.closed = True
        problems.append(
            f"time limit: the load stopped after {seconds:g} s with {tickets.left} sessions unsent"
        )

    timer = asyncio.create_task(expire())
    try:
        yield
    finally:
        timer.cancel()


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every ``POLL_S`` for at most ``timeout`` seconds; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


def new_clients(run: Run, scenario: str, http: aiohttp.ClientSession, opts: Options) -> Clients:
    return Clients(
        scenario, run.run_id, http, opts.answer, deadline_s=opts.deadline_s, retry_s=opts.retry_s,
        max_reads=opts.max_reads, post_timeout_s=opts.post_timeout_s,
    )


def http_session(connections: int) -> aiohttp.ClientSession:
    """Pooled; idle connections dropped before uvicorn's keep-alive ends."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=3)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
    )


async def _finish(
    run: Run, scenario: str, clients: Clients, services: list[Service], began: float,
    facts: dict[str, Any], problems: list[str],
) -> Outcome:
    await clients.close()
    facts["dead_lettered"] = await dead_lettered(run, scenario)
    logs = [str(s.log) for s in services]
    run.stack.stop([s for s in services if s in run.stack.services])
    facts["redelivered_generations"] = redelivered_generations([s for s in services if "worker" in s.name])
    counts = tally(scenario, clients.sessions, clients.posts)
    lost = set(facts["dead_lettered"])
    counts.failures = [
        (sid, f"{what} (its task is in the dead-letter queue)" if sid.split()[-1] in lost else what)
        for sid, what in counts.failures
    ]
    return Outcome(scenario, counts, facts, problems, time.monotonic() - began, logs)


# -- workers: SIGKILL a worker every 1-2 s -----------------------------------------------------


async def workers(run: Run, opts: Options) -> Outcome:
    began = time.monotonic()
    apis, workers = await start_processes(run, "workers", 1, opts.workers)
    urls = [base_url(a) for a in apis]
    problems: list[str] = []
    all_started = list(workers)
    async with http_session(opts.users * 2) as http:
        clients = new_clients(run, "workers", http, opts)
        tickets = Tickets(opts.sessions)
        killer = WorkerKiller(run.stack, workers, run.rng, clients.in_flight, opts.kill_every)
        stop = asyncio.Event()
        kills = asyncio.create_task(killer.run(stop))

        def keeps_pace(n: int) -> bool:
            # The sessions are spread over the kills, whatever their pace: the n-th starts once
            # kill (min_kills + 0.5) * n / sessions is behind us, so the last ones see the last kill.
            # When the next kill waits for a session under way and none is, one goes through.
            due = killer.due((opts.min_kills + 0.5) * n / opts.sessions)
            return due or (killer.waiting_for_load and clients.in_flight() == 0)

        try:
            async with time_limit(opts.time_limit_s, tickets, problems):
                await closed_loop(clients, urls, opts, tickets, run.rng, gate=keeps_pace)
        finally:
            stop.set()
            await kills
        all_started += killer.replacements
        facts = {**killer.facts(), "workers": opts.workers}
        if len(killer.kills) < opts.min_kills:
            problems.append(f"only {len(killer.kills)} worker kills, {opts.min_kills} wanted")
        if facts["killed_by_sigkill"] != len(killer.kills):
            codes = [k.returncode for k in killer.kills]
            problems.append(f"not every killed worker died of SIGKILL: {codes}")
        if killer.kills and facts["kills_mid_answer"] == 0:
            problems.append("no kill landed while answers were under way")
        problems += [f"a restarted worker never became ready: {f}" for f in killer.restart_failures]
        outcome = await _finish(run, "workers", clients, [*apis, *all_started], began, facts, problems)
    if killer.kills and not outcome.facts["redelivered_generations"]:
        outcome.problems.append("no kill interrupted a generation (no task was delivered again)")
    return outcome


# -- broker: stop_app, hold it down, start_app --------------------------------------------------


async def broker(run: Run, opts: Options) -> Outcome:
    began = time.monotonic()
    apis, workers = await start_processes(run, "broker", 1, opts.workers)
    urls = [base_url(a) for a in apis]
    problems: list[str] = []
    facts: dict[str, Any] = {}
    async with http_session(opts.users * 2) as http:
        clients = new_clients(run, "broker", http, opts)
        tickets = Tickets(opts.sessions)
        outage = BrokerOutage(run.node, opts.outage_s)
        async with time_limit(opts.time_limit_s, tickets, problems):
            load = asyncio.create_task(closed_loop(clients, urls, opts, tickets, run.rng))
            threshold = int(opts.sessions * opts.outage_after)
            await until(lambda: len(clients.sessions) >= threshold or load.done(), UNDER_WAY_TIMEOUT_S * 5)
            facts["in_flight_at_stop"] = clients.in_flight()
            probe = asyncio.create_task(intake_probe(clients, urls[0], outage, tickets, opts.probe_every_s))

            def refused_while_down() -> bool:
                down = outage.down_at
                return down is not None and any(p.status == 503 and p.at >= down for p in clients.posts)

            try:
                await outage.run(refused=refused_while_down)
            finally:
                if not outage.came_back.is_set():
                    # Bring it back whatever happened, or nothing after this can run.
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(run.node.start_app)
            await asyncio.gather(load, probe)
        facts.update(outage.facts())
        facts.update(_intake(clients.sessions, clients.posts, outage))
        if not facts["in_flight_at_stop"]:
            problems.append("no session was under way when the broker was stopped")
        if outage.down_at is None or outage.up_at is None:
            problems.append("the broker was never seen down and back")
        if not facts["refused_while_down"]:
            problems.append("no POST was refused while the broker was down")
        if facts["intake_back_s"] is None:
            problems.append("no POST was accepted after the broker came back")
        return await _finish(run, "broker", clients, [*apis, *workers], began, facts, problems)


async def intake_probe(
    clients: Clients, url: str, outage: BrokerOutage, tickets: Tickets, every_s: float
) -> None:
    """From the moment the broker is gone, POST every ``every_s`` (ignoring ``Retry-After``:
    it measures) until one is accepted after the broker is back; that session is read like any.
    It does not stop with the load: it ends on an acceptance, or after ``PROBE_LIMIT_S``."""
    await outage.went_down.wait()
    deadline = time.monotonic() + PROBE_LIMIT_S
    while time.monotonic() < deadline:
        ticket = tickets.take()
        outcome = await clients.post_sse(url, probe=True)
        if isinstance(outcome, Session):
            await clients.read(outcome, [url])
            return
        if ticket:
            tickets.give_back()
        await asyncio.sleep(every_s)


def _intake(sessions: list[Session], posts: list[Post], outage: BrokerOutage) -> dict[str, Any]:
    down, up = outage.down_at, outage.up_at
    if down is None or up is None:
        return {"refused_while_down": 0, "intake_back_s": None, "accepted_while_down": 0}
    after = [s.accepted_at for s in sessions if s.accepted_at > up]
    return {
        "refused_while_down": sum(1 for p in posts if p.status is not None and down <= p.at <= up),
        "refused": sum(1 for p in posts if p.status == 503),
        "accepted_while_down": sum(1 for s in sessions if down < s.accepted_at < up),
        "intake_back_s": round(min(after) - up, 2) if after else None,
    }


# -- api: SIGKILL one of two API processes mid-answer ------------------------------------------


async def api(run: Run, opts: Options) -> Outcome:
    """Every session is POSTed to one of the two processes and read from one of them (each of
    the four combinations a quarter of the time); the process that is killed is read by half."""
    began = time.monotonic()
    apis, workers = await start_processes(run, "api", 2, opts.workers)
    urls = [base_url(a) for a in apis]
    victim, survivor = urls
    problems: list[str] = []
    facts: dict[str, Any] = {}
    async with http_session(opts.sessions * 2 + 10) as http:
        clients = new_clients(run, "api", http, opts)
        queued = await asyncio.gather(*(clients.post_sse(urls[i % 2]) for i in range(opts.sessions)))
        readers: dict[str, list[Session]] = {victim: [], survivor: []}
        reads = []
        for i, outcome in enumerate(queued):
            if isinstance(outcome, Session):
                first = urls[(i // 2) % 2]
                readers[first].append(outcome)
                order = [first, *(u for u in urls if u != first)]
                reads.append(asyncio.create_task(clients.read(outcome, order)))
        on_victim = readers[victim]

        def ripe() -> bool:
            # Every reader of the victim under way, or one of them mid-answer about to end: the
            # kill then hits as many mid-answer readers as it can, however slow the machine.
            started = [s for s in on_victim if position(s) > 0]
            mid = [s for s in started if not finished(s) and position(s) < len(s.expected)]
            nearly = any(position(s) >= len(s.expected) * 0.7 for s in mid)
            return bool(on_victim) and (len(started) == len(on_victim) or nearly) and bool(mid)

        await until(lambda: ripe() or all(finished(s) for s in on_victim), UNDER_WAY_TIMEOUT_S * 10)
        mid_answer = [s for s in on_victim if not finished(s) and position(s) < len(s.expected)]
        run.stack.kill(apis[0])
        facts.update(
            api_killed_returncode=apis[0].popen.returncode,
            readers_on_killed=len(on_victim),
            mid_answer_at_kill=len(mid_answer),
            readers_on_other=len(readers[survivor]),
        )
        await asyncio.gather(*reads)
        facts["resumed_on_other"] = sum(1 for s in mid_answer if _resumed_on(s, survivor))
        if facts["api_killed_returncode"] != -9:
            problems.append(f"the API process ended with {facts['api_killed_returncode']}, not SIGKILL")
        if not mid_answer:
            problems.append("no reader of the killed process was mid-answer at the kill")
        return await _finish(run, "api", clients, [*apis, *workers], began, facts, problems)


def _resumed_on(session: Session, url: str) -> bool:
    """The stream dropped, and a later read on ``url`` got text or the final event."""
    dropped = False
    for read in session.reads:
        if read.end == "dropped":
            dropped = True
        elif dropped and read.url == url and read.status == 200 and read.events:
            return True
    return False


SCENARIOS = {"workers": workers, "api": api, "broker": broker}
