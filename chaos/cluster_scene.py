"""One cluster scenario under way (:class:`Scene`), and what every scenario shares.

A scene holds the run's cluster (``Run.node``, a ``BrokerCluster``), the scenario's API and
worker processes (started on the balancer's address, or with ``--node-list`` on the nodes'
URLs), the load (``scenarios.closed_loop``, at most ``rate`` POSTs a second), an intake probe
on every API process, the facts it measured and the failures no session shows. It opens with
the cluster made whole and closes (:meth:`Scene.finish`) with the cluster made whole again,
every session judged by the oracle and the scenario's topology deleted (``scenarios._finish``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

import cluster_control as control
import topology
from clients import Answer
from cluster_measures import IntakeProbe, TimedClients, longest, longest_stall
from oracle import Post
from scenarios import (
    Options,
    Outcome,
    Run,
    Tickets,
    _env,
    _finish,
    base_url,
    closed_loop,
    scenario_names,
    time_limit,
    until,
)
from stack import Service, free_port

PROBE_ANSWER = Answer(2, 100)
"""The intake probes' sessions: two tokens, soon over."""
PLACEMENT_TRIES = 8
READY_TIMEOUT_S = 120.0
SLOWEST_LISTED = 20
"""The slowest refused POSTs listed in the facts."""


@dataclass
class ClusterOptions(Options):
    apis: int = 2
    rate: float = 10.0
    """Most POSTs a second of the load (users and their retries)."""
    before_s: float = 10.0
    """Load before the fault."""
    fault_s: float = 20.0
    """How long the node stays down, hung or cut off (rolling: the pause between two nodes)."""
    after_s: float = 15.0
    """Load after the node is back."""
    node_list: bool = False
    """The processes get the nodes' URLs (``RABBIT_MQ=url1,url2,url3``) instead of the balancer."""
    backlog: int = 0
    """stream-leader: SSE sessions queued at once, more than the workers take."""
    concurrency: int = 0
    """``WORKER_CONCURRENCY`` of each worker (0: its default)."""


@dataclass
class Scene:
    """What one cluster scenario holds: the cluster, its processes, load, probes and watches."""

    run: Run
    opts: ClusterOptions
    name: str
    http: aiohttp.ClientSession
    began: float = field(default_factory=time.monotonic)
    apis: list[Service] = field(default_factory=list)
    workers: list[Service] = field(default_factory=list)
    retired: list[Service] = field(default_factory=list)
    """Processes stopped to place others (their logs are kept)."""
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    """Besides the oracle's: what the system did wrong that no session shows."""
    clients: TimedClients = field(init=False)
    probe_clients: TimedClients = field(init=False)
    probes: list[IntakeProbe] = field(default_factory=list)
    tickets: Tickets = field(init=False)
    load: asyncio.Task[None] | None = None
    fault_at: float = 0.0
    fault_epoch: float = 0.0
    """``fault_at`` as Unix time (for the processes' logs)."""
    names: topology.Names = field(init=False)
    _limit: Any = None
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.names = scenario_names(self.run, self.name, self.opts)
        self.clients = self._clients(self.name, self.opts.answer)
        self.probe_clients = self._clients(f"{self.name}/probe", PROBE_ANSWER)
        self.tickets = Tickets(self.opts.sessions)

    def _clients(self, label: str, answer: Answer) -> TimedClients:
        o = self.opts
        return TimedClients(
            label,
            self.run.run_id,
            self.http,
            answer,
            deadline_s=o.deadline_s,
            retry_s=o.retry_s,
            max_reads=o.max_reads,
            post_timeout_s=o.post_timeout_s,
        )

    @property
    def cluster(self) -> Any:
        return self.run.node

    @property
    def task_queue(self) -> str:
        return self.names.env["TASK_QUEUE"]

    @property
    def urls(self) -> list[str]:
        return [base_url(a) for a in self.apis]

    def say(self, what: str) -> None:
        """A progress line: the scenario's seconds so far, and what just happened."""
        print(f"  {self.name} {time.monotonic() - self.began:5.1f} s: {what}", flush=True)

    def short(self, node: str | None) -> str:
        """``n2`` for the cluster's second node."""
        for index, n in enumerate(self.cluster.nodes, start=1):
            if n.name == node:
                return f"n{index}"
        return str(node)

    def node(self, name: str) -> Any:
        return next(n for n in self.cluster.nodes if n.name == name)

    def at(self, moment: float | None) -> float | None:
        """Seconds after the fault."""
        return None if moment is None else round(moment - self.fault_at, 2)

    # -- processes ---------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        url = self.cluster.node_urls if self.opts.node_list else self.cluster.balanced_url
        return _env(replace(self.run, amqp_url=url), self.names)

    def start_api(self) -> Service:
        port, n = free_port(), next(self._counter)
        env = {**self._env(), "HOST": "127.0.0.1", "PORT": str(port), "UVICORN_WORKERS": "1"}
        service = self.run.stack.start(
            f"{self.name}-api{n}", "llm-stream-api", env, f"http://127.0.0.1:{port}/health/full"
        )
        self.apis.append(service)
        return service

    def start_worker(self) -> Service:
        port, n = free_port(), next(self._counter)
        env = {**self._env(), "METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(port), "SHUTDOWN_GRACE_S": "2"}
        if self.opts.concurrency:
            env["WORKER_CONCURRENCY"] = str(self.opts.concurrency)
        service = self.run.stack.start(
            f"{self.name}-worker{n}", "llm-stream-worker", env, f"http://127.0.0.1:{port}/health"
        )
        self.workers.append(service)
        return service

    async def open(self) -> None:
        """The cluster whole; the processes started and ready (the APIs first: they declare)."""
        done = await asyncio.to_thread(control.restore, self.cluster)
        if done:
            self.facts["restored_before"] = done
        for _ in range(self.opts.apis):
            self.start_api()
        for _ in range(self.opts.workers):
            self.start_worker()
        await self.run.stack.wait_ready([*self.apis, *self.workers], timeout=READY_TIMEOUT_S)
        self.say(f"{len(self.apis)} API processes and {len(self.workers)} workers ready")

    async def replace_process(self, service: Service) -> Service:
        """Stop ``service`` and start another of its kind (a new connection, so maybe another node)."""
        self.run.stack.stop([service])
        self.retired.append(service)
        if service in self.apis:
            self.apis.remove(service)
            fresh = self.start_api()
        else:
            self.workers.remove(service)
            fresh = self.start_worker()
        await self.run.stack.wait_ready([fresh], timeout=READY_TIMEOUT_S)
        return fresh

    async def place(self, *, worker: bool, leader: bool) -> tuple[str | None, dict[str, str]]:
        """A node with an API process on it (and a worker, with ``worker``) and another API
        process elsewhere; with ``leader``, the task queue's leader if that can be arranged in
        ``PLACEMENT_TRIES`` process restarts. Returns the node and where every process sits."""
        where: dict[str, str] = {}
        fallback: str | None = None
        for attempt in range(PLACEMENT_TRIES + 1):
            where = await control.placement(self.cluster, [*self.apis, *self.workers])
            lead = (await asyncio.to_thread(control.leaders, self.cluster, [self.task_queue]))[
                self.task_queue
            ]
            api_nodes = [where[a.name] for a in self.apis]
            worker_nodes = [where[w.name] for w in self.workers]

            def fits(
                node: str, api_nodes: list[str] = api_nodes, worker_nodes: list[str] = worker_nodes
            ) -> bool:
                others = len(self.apis) < 2 or any(n != node for n in api_nodes)
                return node in api_nodes and others and (not worker or node in worker_nodes)

            good = [n for n in dict.fromkeys(api_nodes) if fits(n)]
            if good and fallback is None:
                fallback = good[0]
            target = lead if leader and lead is not None else (good[0] if good else api_nodes[0])
            if fits(target):
                self.say(
                    f"placed: {self.short(target)} holds an API process"
                    + (" and a worker" if worker else "")
                    + (" and the task queue's leader" if target == lead else "")
                    + f" ({attempt} restarts)"
                )
                self.facts["placement_restarts"] = attempt
                self.facts["leader_on_fault_node"] = target == lead
                return target, where
            if attempt == PLACEMENT_TRIES:
                break
            # Move one process: an API onto the target (or off it, when all are there), else a worker.
            if target not in api_nodes:
                crowded = max(set(api_nodes), key=api_nodes.count)
                victim = next(a for a in reversed(self.apis) if where[a.name] == crowded)
            elif all(n == target for n in api_nodes):
                victim = self.apis[-1]
            else:
                victim = next(w for w in reversed(self.workers) if where[w.name] != target)
            await self.replace_process(victim)
        self.facts["placement_restarts"] = PLACEMENT_TRIES
        self.facts["leader_on_fault_node"] = False
        if fallback is None:
            self.problems.append(f"could not place the processes as wanted: {where}")
        return fallback, where

    # -- load --------------------------------------------------------------------------------

    async def start_load(self) -> None:
        self._limit = time_limit(self.opts.time_limit_s, self.tickets, self.problems)
        await self._limit.__aenter__()
        self.load = asyncio.create_task(
            closed_loop(self.clients, self.urls, self.opts, self.tickets, self.run.rng, rate=self.opts.rate)
        )
        await self.note_leaders()
        # The fault hits sessions under way: wait for some (a slow machine takes its time).
        await until(lambda: self.clients.in_flight() >= 2 or self.load.done(), 120)  # type: ignore[union-attr]
        await asyncio.sleep(self.opts.before_s)

    def start_probes(self) -> None:
        for index, url in enumerate(self.urls):
            probe = IntakeProbe(self.probe_clients, url, f"api{index}", self.opts.probe_every_s)
            self.probes.append(probe)
            probe.start()

    async def end_load(self) -> None:
        self.say("load over")
        self.tickets.closed = True
        for probe in self.probes:
            await probe.stop()
        if self.load is not None:
            await self.load
        if self._limit is not None:
            await self._limit.__aexit__(None, None, None)

    # -- figures -----------------------------------------------------------------------------

    def intake_facts(self, where: dict[str, str] | None = None) -> dict[str, Any]:
        """The probes' refused spans (seconds after the fault), the slowest refused POST, the
        first POST accepted after the fault and the slowest accepted one."""
        per_api = {}
        for probe, api in zip(self.probes, self.apis, strict=False):
            spans = probe.spans()
            later = [(s, length) for s, length, _ in spans if s >= self.fault_at]
            per_api[probe.label] = {
                "back_s": self.at(later[-1][0] + later[-1][1]) if later else 0.0,
                "node": self.short(where.get(api.name)) if where else None,
                "probes": len(probe.tries),
                "refused": sum(1 for t in probe.tries if not t.accepted),
                "refused_spans": [[self.at(s), round(length, 2), n] for s, length, n in spans],
                "longest_refused_s": longest(spans),
            }
        took = [*self.clients.took.values(), *self.probe_clients.took.values()]
        labels = {base_url(a): f"api{i}" for i, a in enumerate(self.apis)}
        posts = [(c, p) for c in (self.clients, self.probe_clients) for p in c.posts]

        def described(c: TimedClients, p: Post, why: int = 160) -> dict[str, Any]:
            return {
                "api": labels.get(p.url, p.url),
                "client": "probe" if p.probe else p.client,
                "sent_s": self.at(p.at),
                "took_s": round(c.took.get(id(p), 0.0), 2),
                "status": p.status,
                "why": p.why[:why],
            }

        refusals = sorted((described(c, p) for c, p in posts), key=lambda r: -r["took_s"])
        others = [described(c, p, 300) for c, p in posts if p.code != "broker_unavailable"]
        after = [
            (s.accepted_at - self.fault_at, c.post_seconds(s) or 0.0)
            for c in (self.clients, self.probe_clients)
            for s in c.sessions
            if (c.sent_at.get(s.prompt) or 0.0) >= self.fault_at
        ]
        return {
            "intake": per_api,
            "longest_refused_s": max((a["longest_refused_s"] for a in per_api.values()), default=0.0),
            "intake_back_s": max((a["back_s"] for a in per_api.values()), default=0.0),
            "slowest_refused_post_s": round(max(took), 2) if took else None,
            "refused_posts": len(took),
            "slowest_refusals": refusals[:SLOWEST_LISTED],
            "other_refusals": others[:SLOWEST_LISTED],
            "first_accepted_after_fault_s": round(min(a for a, _ in after), 2) if after else None,
            "slowest_accepted_post_s": round(max(p for _, p in after), 2) if after else None,
        }

    async def note_leaders(self) -> None:
        """The leader of each of the scenario's queues and streams, before the fault."""
        queues = scenario_queues(self)
        with contextlib.suppress(Exception):
            led = await asyncio.to_thread(control.leaders, self.cluster, queues)
            self.facts["leaders_before"] = {
                q.rsplit(".", 1)[-1] if q != self.task_queue else "tasks": self.short(n)
                for q, n in led.items()
            }

    def stall_facts(self, since: float, until_at: float) -> dict[str, Any]:
        sessions = [*self.clients.sessions, *self.probe_clients.sessions]
        return longest_stall(sessions, since, until_at)

    # -- the end -----------------------------------------------------------------------------

    async def finish(self) -> Outcome:
        """Load over; the cluster whole again; every session judged; the topology deleted."""
        await self.end_load()
        try:
            done = await asyncio.to_thread(control.restore, self.cluster)
        except Exception as exc:  # any failure of the harness's own: the run says so
            self.problems.append(f"the cluster could not be made whole again: {type(exc).__name__}: {exc}")
            done = []
        if done:
            self.facts["restored_after"] = done
        self.say("the cluster whole" + (f" ({'; '.join(done)})" if done else ""))
        await self.probe_clients.close()
        self.clients.sessions.extend(self.probe_clients.sessions)
        self.clients.posts.extend(self.probe_clients.posts)
        services = [*self.apis, *self.workers, *self.retired]
        outcome = await _finish(
            self.run,
            self.name,
            self.name,
            self.opts,
            self.clients,
            services,
            self.began,
            self.facts,
            self.problems,
        )
        outcome.tally.failures += self.failures
        return outcome


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


async def wait_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def restart(scene: Scene, node: Any) -> float:
    began = time.monotonic()
    await asyncio.to_thread(scene.cluster.start, node)
    took = round(time.monotonic() - began, 2)
    scene.say(f"{scene.short(node.name)} started again, back in the cluster in {took:g} s")
    return took


def scenario_queues(scene: Scene) -> list[str]:
    env = scene.names.env
    return [scene.task_queue, f"{scene.task_queue}.log", env["EVENTS_STREAM"], env["CANCELS_STREAM"]]


def moves(
    scene: Scene,
    watch: control.ConnectionWatch,
    health: dict[str, control.HealthWatch],
    node: str,
    where: dict[str, str],
    *,
    must_move: bool = True,
) -> dict[str, Any]:
    """For every process that sat on ``node``: when it was seen on another node, and (an API)
    how long its /health/full said it was reconnecting."""
    moved: dict[str, Any] = {}
    for service in [*scene.apis, *scene.workers]:
        if where.get(service.name) != node:
            continue
        seen = watch.moved(service.name, node, scene.fault_at)
        entry: dict[str, Any] = {
            "seen_on": scene.short(seen[1]) if seen else None,
            "seen_after_s": scene.at(seen[0]) if seen else None,
        }
        # From its log: when it noticed the loss, and its first work after that.
        lost = control.first_logged(service, control.LOST, scene.fault_epoch)
        work = b"generation started" if service in scene.workers else b"task queued"
        logged = control.first_logged(service, work, lost or scene.fault_epoch)
        entry["lost_connection_s"] = None if lost is None else round(lost - scene.fault_epoch, 2)
        entry["working_again_s"] = None if logged is None else round(logged - scene.fault_epoch, 2)
        if service.name in health:
            outages = health[service.name].outages(scene.fault_at)
            if outages:
                down, back = outages[0]
                entry["unready_from_s"] = scene.at(down)
                entry["ready_again_s"] = scene.at(back)
        moved[service.name] = entry
        if seen is None and must_move and entry["working_again_s"] is None:
            scene.failures.append(
                (
                    f"{control.role_of(service)} {service.name}",
                    f"neither seen on another node nor working again after {scene.short(node)} failed",
                )
            )
    return moved


def connections_seen(scene: Scene, watch: control.ConnectionWatch) -> list[list[Any]]:
    """(seconds after the fault, process, node) of every change the watch saw; the rounds no
    node answered are noted in ``connections_unanswered`` (first and last, how many)."""
    if watch.unanswered:
        first, last = watch.unanswered[0], watch.unanswered[-1]
        scene.facts["connections_unanswered"] = {
            "rounds": len(watch.unanswered),
            "first_s": scene.at(first[0]),
            "last_s": scene.at(last[0]),
            "why": last[1],
        }
    return [[scene.at(at), name, scene.short(node) if node else None] for at, name, node in watch.seen]


def reconnect_s(moved: dict[str, Any]) -> float | None:
    """The slowest process back: an API ready again (its /health/full), a worker seen on
    another node, or else generating again (its log)."""
    times = []
    for e in moved.values():
        seen = [t for t in (e.get("seen_after_s"), e.get("working_again_s")) if t is not None]
        times.append(e.get("ready_again_s") or (min(seen) if seen else None))
    known = [t for t in times if t is not None]
    return max(known) if known else None
