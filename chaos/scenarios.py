"""The three scenarios: load through a real stack while one kind of fault hits it.

Each scenario starts its own API and worker processes (``bench/stack.py``) on the run's
private RabbitMQ node, with queue and exchange names of its own (``chaos.<run id>-<scenario>.*``),
drives load with :mod:`clients`, injects its fault (:mod:`faults`), waits until every accepted
session has ended or passed its deadline, stops its processes and hands the observations to
:mod:`oracle`. ``problems`` lists the ways the fault itself did not happen as planned (then the
run proves nothing, and fails). At the end the scenario's queues and exchanges are deleted
(:mod:`topology`); anything left under its prefix fails the run too.

With ``Options.pools`` (the ``<scenario>-pools`` variants) the same scenario runs with two
model pools (:mod:`pools`): the workers are split between them, each session asks for one
pool's model and a service tier, every session is judged as without pools and, besides, on
where it went (the line its task waited in, the pool of the workers that generated it), and
the counts are given per pool as well as in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

import topology
from clients import Answer, Clients, finished, position
from faults import BrokerOutage, WorkerKiller
from oracle import Post, Session, Tally, tally
from pools import Picker, Pools, misrouted
from stack import Service, Stack, broker_names, free_port

KINDS = ("sse", "sync", "openai")
UNDER_WAY_TIMEOUT_S = 60.0
LET_THROUGH_S = 1.0
"""workers: while a kill waits for a session under way, a group of sessions goes through a second."""
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
    pools: Pools | None = None
    """Two model pools instead of none (the ``-pools`` variants)."""


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
    kind: str = ""
    """``workers``, ``broker`` or ``api`` (``scenario`` may be a ``-pools`` variant)."""
    pools: dict[str, Tally] = field(default_factory=dict)
    """With pools: the counts of each pool's sessions and refusals (their sum is ``tally``)."""
    pool_facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    """Queues and exchanges of the scenario still on the broker after its clean-up."""

    def as_dict(self) -> dict[str, Any]:
        result = {
            **self.tally.as_dict(),
            "facts": self.facts,
            "problems": self.problems,
            "leftovers": self.leftovers,
            "wall_s": round(self.wall_s, 1),
            "logs": self.logs,
        }
        if self.pools:
            result["pools"] = {
                pool: {**counts.as_dict(), **self.pool_facts.get(pool, {})}
                for pool, counts in self.pools.items()
            }
        return result


# -- processes ---------------------------------------------------------------------------------


def _env(run: Run, names: topology.Names) -> dict[str, str]:
    env = {
        "RABBIT_MQ": run.amqp_url,
        "RABBITMQ_MANAGEMENT_URL": run.management_url,
        "OPENAI_BASE_URL": f"{run.mock_url}/v1",
        "OPENAI_API_KEY": "chaos",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "console",
        **names.env,
    }
    if names.pools is not None:
        env["LLM_POOLS"] = names.pools.llm_pools(f"{run.mock_url}/v1")
    return env


def start_api(run: Run, scenario: str, names: topology.Names, index: int) -> Service:
    port = free_port()
    return run.stack.start(
        f"{scenario}-api{index}", "llm-stream-api",
        {**_env(run, names), "HOST": "127.0.0.1", "PORT": str(port), "UVICORN_WORKERS": "1"},
        f"http://127.0.0.1:{port}/health/full",
    )


def start_worker(run: Run, scenario: str, names: topology.Names, index: int) -> Service:
    """Worker ``index``; with pools, of pool ``index mod 2`` (its ``LLM_POOL``, in its name)."""
    port = free_port()
    env = {
        **_env(run, names), "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(port), "SHUTDOWN_GRACE_S": "2",
    }
    name = f"{scenario}-worker{index}"
    if names.pools is not None:
        env["LLM_POOL"] = names.pools.worker_pool(index)
        name += f"-{env['LLM_POOL']}"
    return run.stack.start(name, "llm-stream-worker", env, f"http://127.0.0.1:{port}/health")


def base_url(api: Service) -> str:
    return api.health_url.rsplit("/health", 1)[0]


def scenario_names(run: Run, scenario: str, opts: Options) -> topology.Names:
    return topology.Names.of(broker_names(f"{run.run_id}-{scenario}", tool="chaos"), opts.pools)


async def start_processes(
    run: Run, scenario: str, opts: Options, apis: int
) -> tuple[list[Service], list[Service]]:
    names = scenario_names(run, scenario, opts)
    started_apis = [start_api(run, scenario, names, i) for i in range(apis)]
    started_workers = [start_worker(run, scenario, names, i) for i in range(opts.workers)]
    await run.stack.wait_ready([*started_apis, *started_workers], timeout=120)
    return started_apis, started_workers


# -- evidence ----------------------------------------------------------------------------------

GENERATION = re.compile(rb"generation started[^\n]*")
ATTEMPT = re.compile(rb"attempt=(\d+)")
SESSION = re.compile(rb"session_id=(\w+)")


@dataclass
class Generations:
    """What the workers' logs say they generated."""

    redelivered: dict[str, int] = field(default_factory=dict)
    """Pool -> generations started on a task's second or later delivery."""
    pools_of: dict[str, set[str]] = field(default_factory=dict)
    """Session id -> the pools of the workers that started generating it."""

    @classmethod
    def read(cls, workers: list[Service]) -> Generations:
        found = cls()
        for worker in workers:
            pool = WorkerKiller.pool_of(worker)
            try:
                log = worker.log.read_bytes()
            except OSError:
                continue
            for line in GENERATION.finditer(log):
                attempt, sid = ATTEMPT.search(line.group()), SESSION.search(line.group())
                if attempt and int(attempt.group(1)) > 1:
                    found.redelivered[pool] = found.redelivered.get(pool, 0) + 1
                if sid:
                    found.pools_of.setdefault(sid.group(1).decode(), set()).add(pool)
        return found


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
    """With pools, the sessions take the pools and their tiers in turn (:class:`pools.Picker`)."""
    return Clients(
        scenario, run.run_id, http, opts.answer, deadline_s=opts.deadline_s, retry_s=opts.retry_s,
        max_reads=opts.max_reads, post_timeout_s=opts.post_timeout_s,
        **({"pick": Picker(opts.pools)} if opts.pools is not None else {}),
    )


def http_session(connections: int) -> aiohttp.ClientSession:
    """Pooled; idle connections dropped before uvicorn's keep-alive ends."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=3)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
    )


async def _finish(
    run: Run, kind: str, scenario: str, opts: Options, clients: Clients, services: list[Service],
    began: float, facts: dict[str, Any], problems: list[str], killer: WorkerKiller | None = None,
) -> Outcome:
    await clients.close()
    names = scenario_names(run, scenario, opts)
    dead = sorted({names.env["DEAD_LETTER_QUEUE"], *names.dead_letters.values()})
    facts["dead_lettered"] = await topology.dead_lettered(run.management_url, dead)
    logs = [str(s.log) for s in services]
    run.stack.stop([s for s in services if s in run.stack.services])
    generations = Generations.read([s for s in services if "worker" in s.name])
    facts["redelivered_generations"] = sum(generations.redelivered.values())
    queued: dict[str, set[str]] = {}
    if opts.pools is not None:
        queued = await topology.queued_in(run.amqp_url, names.task_queues)
    cleanup = await topology.delete(run.amqp_url, names)
    left = [*cleanup, *await topology.leftovers(run.management_url, names.prefix)]

    lost = set(facts["dead_lettered"])

    def judged(label: str, sessions: list[Session], posts: list[Post]) -> Tally:
        counts = tally(label, sessions, posts)
        counts.failures = [
            (sid, f"{what} (its task is in the dead-letter queue)" if sid.split()[-1] in lost else what)
            for sid, what in counts.failures
        ]
        return counts

    counts = judged(scenario, clients.sessions, clients.posts)
    outcome = Outcome(
        scenario, counts, facts, problems, time.monotonic() - began, logs, kind=kind, leftovers=left
    )
    if opts.pools is not None:
        _judge_pools(outcome, opts.pools, names, clients, queued, generations, judged, killer)
    return outcome


def _judge_pools(
    outcome: Outcome, pools: Pools, names: topology.Names, clients: Clients, queued: dict[str, set[str]],
    generations: Generations, judged: Callable[[str, list[Session], list[Post]], Tally],
    killer: WorkerKiller | None,
) -> None:
    """Each pool's counts, and a failure for every session that went elsewhere than its pool's
    line for its tier, or that a worker of another pool generated."""
    tasks = names.env["TASK_QUEUE"]
    for pool in pools.names:
        sessions = [s for s in clients.sessions if s.pool == pool]
        counts = judged(f"{outcome.scenario} {pool}", sessions, [p for p in clients.posts if p.pool == pool])
        spec = pools.spec(pool)
        lanes = dict.fromkeys(spec.lanes, 0)
        for session in sessions:
            lane = spec.lane(session.tier)
            lanes[lane] += 1
            wrong = misrouted(
                pool, pools.line(tasks, pool, lane), queued.get(session.sid, set()),
                generations.pools_of.get(session.sid, set()), names.lines,
            )
            if wrong is not None:
                failure = (f"{session.client} {session.sid}", wrong)
                counts.failures.append(failure)
                outcome.tally.failures.append(failure)
        outcome.pools[pool] = counts
        outcome.pool_facts[pool] = {
            "lanes": lanes,
            "tiers": {t or "none": sum(1 for s in sessions if s.tier == t) for t in spec.tiers},
            "redelivered_generations": generations.redelivered.get(pool, 0),
            "not_seen_generated": sum(1 for s in sessions if s.sid not in generations.pools_of),
            **(killer.pool_facts(pool) if killer is not None else {}),
        }


# -- workers: SIGKILL a worker every 1-2 s -----------------------------------------------------


async def workers(run: Run, opts: Options, name: str = "workers") -> Outcome:
    began = time.monotonic()
    apis, workers = await start_processes(run, name, opts, 1)
    urls = [base_url(a) for a in apis]
    problems: list[str] = []
    all_started = list(workers)
    async with http_session(opts.users * 2) as http:
        clients = new_clients(run, name, http, opts)
        tickets = Tickets(opts.sessions)
        killer = WorkerKiller(run.stack, workers, run.rng, clients.in_flight, opts.kill_every)
        stop = asyncio.Event()
        kills = asyncio.create_task(killer.run(stop))

        # The sessions are spread over the kills, whatever their pace: session n is of group
        # int((min_kills + 0.5) * n / sessions) and starts once that many kills are behind us, so
        # the last ones see the last kill. When the next kill waits for a session under way (of
        # its pool) and none is, the next group goes through at once (and the one after it a
        # second later, if that was not enough), the later groups keeping their turn.
        pace = (opts.min_kills + 0.5) / opts.sessions
        released, released_at = 0, -LET_THROUGH_S

        def keeps_pace(n: int) -> bool:
            nonlocal released, released_at
            group = int(pace * n)
            if killer.due(group) or group <= released:
                return True
            starved = killer.waiting_for_load and clients.in_flight(killer.waiting_for) == 0
            if starved and time.monotonic() - released_at >= LET_THROUGH_S:
                released, released_at = max(released, len(killer.kills)) + 1, time.monotonic()
            return group <= released

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
        if opts.pools is not None:
            killed = facts.get("kills_by_pool", {})
            problems += [
                f"no worker of pool {pool} was killed" for pool in opts.pools.names if not killed.get(pool)
            ]
        outcome = await _finish(
            run, "workers", name, opts, clients, [*apis, *all_started], began, facts, problems, killer
        )
    if killer.kills and not outcome.facts["redelivered_generations"]:
        outcome.problems.append("no kill interrupted a generation (no task was delivered again)")
    return outcome


# -- broker: stop_app, hold it down, start_app --------------------------------------------------


async def broker(run: Run, opts: Options, name: str = "broker") -> Outcome:
    began = time.monotonic()
    apis, workers = await start_processes(run, name, opts, 1)
    urls = [base_url(a) for a in apis]
    problems: list[str] = []
    facts: dict[str, Any] = {}
    async with http_session(opts.users * 2) as http:
        clients = new_clients(run, name, http, opts)
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
        return await _finish(run, "broker", name, opts, clients, [*apis, *workers], began, facts, problems)


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


async def api(run: Run, opts: Options, name: str = "api") -> Outcome:
    """Every session is POSTed to one of the two processes and read from one of them (each of
    the four combinations a quarter of the time); the process that is killed is read by half."""
    began = time.monotonic()
    apis, workers = await start_processes(run, name, opts, 2)
    urls = [base_url(a) for a in apis]
    victim, survivor = urls
    problems: list[str] = []
    facts: dict[str, Any] = {}
    async with http_session(opts.sessions * 2 + 10) as http:
        clients = new_clients(run, name, http, opts)
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
        return await _finish(run, "api", name, opts, clients, [*apis, *workers], began, facts, problems)


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
