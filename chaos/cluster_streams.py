"""``cluster-stream-leader``: SIGKILL the nodes leading the streams under a queued backlog.

Each node that leads one of the scenario's streams (the history ``EVENTS_STREAM``, the cancels
stream, the queue log ``<TASK_QUEUE>.log``) is killed in turn, the one leading most first,
each time just after a backlog (more sessions at once than the workers take) was queued. Of the
backlog's sessions still under way at the kill, one in four is cancelled on the other API
process (``DELETE /sessions/{id}``, asked again after a 503), one in four is read by a client
that leaves once it has text and resumes on the other API process with ``Last-Event-ID``, and
the queue positions of those that were waiting are watched: one left without any for
``POSITION_SILENCE_FAIL_S`` fails. ``cluster_measures.judge_cancels`` judges the cancelled ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

import cluster_control as control
from clients import BROKEN, SSE_HEADERS, SSEParser, finished, is_final, position
from cluster_measures import Cancel, TimedClients, judge_cancels, news
from cluster_scene import ClusterOptions, Scene, restart, rounded, scenario_queues, wait_until
from oracle import DROPPED, EOF, Read, Session
from scenarios import Outcome, Run, _resumed_on, http_session, until

POSITION_SILENCE_FAIL_S = 10.0
"""A session waiting in the queue gets its position at least every 2 s (docs/events.md): one
that waited this long after the kill without any is a failure."""


async def _leave_and_resume(
    clients: TimedClients, session: Session, first: str, other: str, leave: Callable[[Session], bool]
) -> None:
    """Read on ``first`` until ``leave`` holds, then leave and resume on ``other`` with
    ``Last-Event-ID``, as a client that moved would (``Clients.read`` goes on)."""
    read = Read(first, None)
    session.reads.append(read)
    try:
        async with asyncio.timeout(max(1.0, session.accepted_at + clients.deadline_s - time.monotonic())):
            async with clients.http.get(f"{first}/stream/{session.sid}", headers=SSE_HEADERS) as response:
                read.status = response.status
                if response.status != 200:
                    read.why, read.end = (await response.read())[:300].decode("utf-8", "replace"), EOF
                    session.ended_at = time.monotonic()
                    return
                parser = SSEParser()
                async for chunk in response.content.iter_any():
                    events = parser.feed(chunk)
                    read.events += events
                    if events and is_final(events[-1]):
                        read.end = EOF
                        session.ended_at = time.monotonic()
                        return
                    if leave(session):
                        break
                else:
                    read.end = EOF
                    session.ended_at = time.monotonic()
                    return
    except BROKEN as exc:
        read.why = f"{type(exc).__name__}: {exc}"[:200]
    except TimeoutError:
        read.why = "the deadline passed"
    read.end = DROPPED
    read.why = read.why or "the client left, to resume on another API process"
    await asyncio.sleep(clients.retry_s)
    await clients.read(session, [other, first])


async def _cancel(
    http: aiohttp.ClientSession,
    url: str,
    session: Session,
    cancels: dict[str, Cancel],
    deadline: float,
    failures: list[tuple[str, str]],
) -> None:
    """``DELETE /sessions/{id}`` on ``url``; a 503 is asked again a second later."""
    cancel = Cancel(session.sid, time.monotonic(), text_when_asked=position(session))
    cancels[session.sid] = cancel
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(30), http.delete(f"{url}/sessions/{session.sid}") as response:
                status, body = response.status, await response.read()
        except (*BROKEN, TimeoutError):
            cancel.refusals += 1
            await asyncio.sleep(1.0)
            continue
        if status in (503, 429):
            cancel.refusals += 1
            await asyncio.sleep(1.0)
            continue
        cancel.status, cancel.answered_at = status, time.monotonic()
        with contextlib.suppress(ValueError, AttributeError):
            cancel.outcome = str(orjson.loads(body).get("status", ""))
        if status not in (200, 202):
            failures.append((f"sse {session.sid}", f"cancel answered {status}: {body[:160]!r}"))
        return
    failures.append((f"sse {session.sid}", f"cancel never answered but 503 ({cancel.refusals} times)"))


def _positions_after(session: Session, since: float) -> tuple[int, float, float | None]:
    """Position news received after ``since`` while it waited, the longest silence between
    them (from ``since`` to its first text or end), and when its first text came."""
    first_text = None
    for read in session.reads:
        stamps = getattr(read.events, "times", [])
        for (event_id, name, _), at in zip(read.events, stamps, strict=False):
            if event_id is not None and name is None:
                first_text = at if first_text is None else min(first_text, at)
    waited_until = first_text or session.ended_at or time.monotonic()
    points = [at for at, _ in news(session) if since <= at <= waited_until]
    marks = [since, *points, waited_until]
    silence = max((b - a for a, b in itertools.pairwise(marks)), default=0.0)
    return len(points), silence, first_text


@dataclass
class Round:
    """One kill of the stream-leader scenario: its node, what it led, its backlog."""

    node: str
    led: list[str]
    backlog: list[Session] = field(default_factory=list)
    waiting: list[Session] = field(default_factory=list)
    """Sessions of the backlog waiting in the queue (no text yet) when the node was killed."""
    killed_at: float = 0.0
    killed_epoch: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)


async def stream_leader(run: Run, opts: ClusterOptions, name: str) -> Outcome:
    """Each node that leads one of the streams (history, cancels, queue log) is killed in
    turn, most streams first, under a backlog queued just before: after each kill some of the
    waiting sessions are cancelled (on the other API process), some readers leave and resume
    on the other API process with ``Last-Event-ID``, and the queue positions are watched."""
    async with http_session(opts.users * 4 + opts.backlog * 6 + 64) as http:
        scene = Scene(run, opts, name, http)
        await scene.open()
        env = scene.names.env
        streams = {
            "history": env["EVENTS_STREAM"],
            "cancels": env["CANCELS_STREAM"],
            "queue log": f"{scene.task_queue}.log",
        }
        led = await asyncio.to_thread(control.leaders, scene.cluster, list(streams.values()))
        by_node: dict[str, list[str]] = {}
        for what, queue in streams.items():
            if led[queue] is not None:
                by_node.setdefault(led[queue], []).append(what)
        if not by_node:
            scene.problems.append(f"the streams' leaders are unknown: {led}")
            return await scene.finish()
        rounds = [Round(node, by_node[node]) for node in sorted(by_node, key=lambda n: -len(by_node[n]))]
        await scene.start_load()
        where = await control.placement(scene.cluster, [*scene.apis, *scene.workers])
        urls, clients = scene.urls, scene.clients
        roles: dict[str, str] = {}
        cancels: dict[str, Cancel] = {}
        readers: list[asyncio.Task[None]] = []
        cancelling: list[asyncio.Task[None]] = []
        scene.start_probes()
        await asyncio.sleep(0.5)

        def leave(session: Session) -> bool:
            return roles.get(session.sid) == "resume" and position(session) > 0

        for number, round_ in enumerate(rounds):
            # A backlog: more sessions at once than the workers take, half on each API process.
            posted = await asyncio.gather(
                *(clients.post_sse(urls[i % len(urls)]) for i in range(opts.backlog))
            )
            round_.backlog = [s for s in posted if isinstance(s, Session)]
            for session in round_.backlog:
                readers.append(
                    asyncio.create_task(
                        _leave_and_resume(clients, session, session.post_url, _other(session, urls), leave)
                    )
                )

            def half_waiting(backlog: list[Session] = round_.backlog) -> bool:
                waiting = [s for s in backlog if position(s) == 0 and not finished(s)]
                return any(position(s) > 0 for s in backlog) and len(waiting) <= max(1, len(backlog) * 0.6)

            await until(half_waiting, 120)
            round_.waiting = [s for s in round_.backlog if position(s) == 0 and not finished(s)]
            under_way = [s for s in round_.backlog if not finished(s)]
            victim = scene.node(round_.node)
            round_.facts["in_flight_at_kill"] = clients.in_flight()
            round_.killed_at, round_.killed_epoch = time.monotonic(), time.time()
            if number == 0:
                scene.fault_at, scene.fault_epoch = round_.killed_at, round_.killed_epoch
            await asyncio.to_thread(scene.cluster.kill, victim)
            scene.say(f"SIGKILL {scene.short(round_.node)}, leading {', '.join(round_.led)}")
            # Of the sessions under way: one in four cancelled, one in four leaves and resumes.
            for k, session in enumerate(under_way):
                roles[session.sid] = ("plain", "cancel", "plain", "resume")[k % 4]
            deadline = round_.killed_at + opts.deadline_s
            for k, session in enumerate(s for s in under_way if roles[s.sid] == "cancel"):
                await wait_until(round_.killed_at + 0.5 + 0.25 * k)
                if finished(session):
                    continue
                cancelling.append(
                    asyncio.create_task(
                        _cancel(http, _other(session, urls), session, cancels, deadline, scene.failures)
                    )
                )
            await wait_until(round_.killed_at + opts.fault_s)
            round_.facts["restart_s"] = await restart(scene, victim)
            round_.facts["members_back_s"] = rounded(
                await control.members_back(scene.cluster, scenario_queues(scene))
            )
        await asyncio.sleep(opts.after_s)
        await asyncio.gather(*readers, *cancelling)
        scene.facts.update(
            fault="SIGKILL",
            fault_node=",".join(scene.short(r.node) for r in rounds),
            led={what: scene.short(led[q]) for what, q in streams.items()},
            placement={k: scene.short(v) for k, v in where.items()},
            rounds=[_round_facts(scene, r, roles, cancels) for r in rounds],
            **scene.intake_facts(where),
            **scene.stall_facts(scene.fault_at, time.monotonic()),
        )
        resumers = [s for s in clients.sessions if roles.get(s.sid) == "resume"]
        scene.facts.update(
            backlog=sum(len(r.backlog) for r in rounds),
            waiting_at_kills=sum(len(r.waiting) for r in rounds),
            positions_after_kills=sum(r["positions_after_kill"] for r in scene.facts["rounds"]),
            longest_position_silence_s=max(
                (r["longest_position_silence_s"] or 0.0 for r in scene.facts["rounds"]), default=None
            ),
            resumers=len(resumers),
            resumed_elsewhere=sum(1 for s in resumers if _resumed_on(s, _other(s, urls))),
        )
        if not any(r.waiting for r in rounds):
            scene.problems.append("no session of a backlog was waiting when a node was killed")
        if not cancels:
            scene.problems.append("no cancel was asked after a kill")
        if not resumers:
            scene.problems.append("no reader left and resumed after a kill")
        outcome = await scene.finish()
        outcome.facts.update(judge_cancels(outcome.tally, clients.sessions, cancels))
        return outcome


def _round_facts(
    scene: Scene, round_: Round, roles: dict[str, str], cancels: dict[str, Cancel]
) -> dict[str, Any]:
    """Queue positions of the sessions that waited when the round's node died (a cancelled one
    stops waiting when its cancel lands); failures for those left without one too long."""
    silences, with_news = [], 0
    for session in round_.waiting:
        if session.sid in cancels:
            continue
        count, silence, _ = _positions_after(session, round_.killed_at)
        with_news += count > 0
        silences.append(silence)
        if silence >= POSITION_SILENCE_FAIL_S:
            scene.failures.append(
                (
                    f"sse {session.sid}",
                    f"queue position: none for {silence:.1f} s while it waited after "
                    f"{scene.short(round_.node)} was killed",
                )
            )
    return {
        "node": scene.short(round_.node),
        "led": round_.led,
        "killed_s": scene.at(round_.killed_at),
        **round_.facts,
        "backlog": len(round_.backlog),
        "waiting_at_kill": len(round_.waiting),
        "positions_after_kill": with_news,
        "longest_position_silence_s": round(max(silences), 2) if silences else None,
        "cancels": sum(1 for s in round_.backlog if s.sid in cancels),
        "resumers": sum(1 for s in round_.backlog if roles.get(s.sid) == "resume"),
    }


def _other(session: Session, urls: list[str]) -> str:
    return next((u for u in urls if u != session.post_url), session.post_url)
