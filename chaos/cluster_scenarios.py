"""The cluster scenarios of one node's failure: SIGKILL of the task queue's leader, of a node
that processes sit on, a hang (SIGSTOP), a rolling restart, a network partition (containers).

Each opens a :class:`cluster_scene.Scene`, places its processes where the fault must find them
(``Scene.place``), drives the load, injects the fault, measures it (the probes, the watches of
connections and ``/health/full``) and closes the scene; ``cluster.fault_line`` prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import cluster_control as control
from clients import Answer
from cluster_scene import (
    ClusterOptions,
    Scene,
    connections_seen,
    moves,
    reconnect_s,
    restart,
    rounded,
    scenario_queues,
    wait_until,
)
from oracle import Session
from scenarios import Outcome, Run, http_session

# -- cluster-kill-leader ------------------------------------------------------------------------


async def kill_leader(run: Run, opts: ClusterOptions, name: str) -> Outcome:
    async with http_session(opts.users * 4 + 64) as http:
        scene = Scene(run, opts, name, http)
        await scene.open()
        await scene.start_load()
        lead = (await asyncio.to_thread(control.leaders, scene.cluster, [scene.task_queue]))[scene.task_queue]
        if lead is None:
            scene.problems.append("the task queue's leader is unknown")
            return await scene.finish()
        victim = scene.node(lead)
        where = await control.placement(scene.cluster, [*scene.apis, *scene.workers])
        scene.start_probes()
        await asyncio.sleep(1.0)  # the probes' baseline
        scene.facts["in_flight_at_fault"] = scene.clients.in_flight()
        scene.fault_at, scene.fault_epoch = time.monotonic(), time.time()
        await asyncio.to_thread(scene.cluster.kill, victim)
        scene.say(f"SIGKILL {scene.short(victim.name)}")
        elected = asyncio.create_task(
            control.new_leader(scene.cluster, scene.task_queue, lead, scene.fault_at)
        )
        await wait_until(scene.fault_at + opts.fault_s)
        restart_s = await restart(scene, victim)
        down_s = round(time.monotonic() - scene.fault_at, 1)
        members = await control.members_back(scene.cluster, scenario_queues(scene))
        await asyncio.sleep(opts.after_s)
        new = await elected
        scene.facts.update(
            fault_node=scene.short(lead),
            fault="SIGKILL",
            down_s=down_s,
            leader=scene.short(lead),
            placement={k: scene.short(v) for k, v in where.items()},
            new_leader=scene.short(new[1]) if new else None,
            new_leader_seen_s=rounded(new[0]) if new else None,
            restart_s=restart_s,
            members_back_s=rounded(members),
        )
        until_at = scene.fault_at + opts.fault_s + restart_s + (members or 0)
        outcome_facts = {**scene.intake_facts(where), **scene.stall_facts(scene.fault_at, until_at)}
        scene.facts.update(outcome_facts)
        scene.facts["election_s"] = scene.facts["first_accepted_after_fault_s"]
        if not scene.facts["in_flight_at_fault"]:
            scene.problems.append("no session was under way when the leader was killed")
        if scene.facts["election_s"] is None:
            scene.problems.append("no POST was accepted after the kill")
        return await scene.finish()


# -- cluster-kill-connected ---------------------------------------------------------------------


async def kill_connected(run: Run, opts: ClusterOptions, name: str) -> Outcome:
    async with http_session(opts.users * 4 + 64) as http:
        scene = Scene(run, opts, name, http)
        await scene.open()
        target, where = await scene.place(worker=True, leader=True)
        if target is None:
            return await scene.finish()
        victim = scene.node(target)
        await scene.start_load()
        where = await control.placement(scene.cluster, [*scene.apis, *scene.workers])
        on_it = [s.name for s in [*scene.apis, *scene.workers] if where.get(s.name) == target]
        peers = [n.management_url for n in scene.cluster.nodes if n.name != target]
        watch = control.ConnectionWatch([*scene.apis, *scene.workers], peers)
        health = {a.name: control.HealthWatch(a) for a in scene.apis}
        watch.start()
        for h in health.values():
            h.start(http)
        scene.start_probes()
        await asyncio.sleep(1.0)
        scene.facts["in_flight_at_fault"] = scene.clients.in_flight()
        scene.fault_at, scene.fault_epoch = time.monotonic(), time.time()
        await asyncio.to_thread(scene.cluster.kill, victim)
        scene.say(f"SIGKILL {scene.short(victim.name)}")
        await wait_until(scene.fault_at + opts.fault_s)
        restart_s = await restart(scene, victim)
        down_s = round(time.monotonic() - scene.fault_at, 1)
        members = await control.members_back(scene.cluster, scenario_queues(scene))
        await asyncio.sleep(opts.after_s)
        await watch.stop()
        for h in health.values():
            await h.stop()
        moved = moves(scene, watch, health, target, where)
        scene.facts["connections_seen"] = connections_seen(scene, watch)
        scene.facts.update(
            fault_node=scene.short(target),
            fault="SIGKILL",
            down_s=down_s,
            placement={k: scene.short(v) for k, v in where.items()},
            on_fault_node=on_it,
            moved=moved,
            reconnect_s=reconnect_s(moved),
            restart_s=restart_s,
            members_back_s=rounded(members),
        )
        until_at = scene.fault_at + opts.fault_s + restart_s
        scene.facts.update({**scene.intake_facts(where), **scene.stall_facts(scene.fault_at, until_at)})
        if not any("-api" in n for n in on_it) or not any("-worker" in n for n in on_it):
            scene.problems.append(f"the killed node held no API process and worker: {on_it}")
        if not scene.facts["in_flight_at_fault"]:
            scene.problems.append("no session was under way when the node was killed")
        return await scene.finish()


# -- cluster-hang ---------------------------------------------------------------------------------


async def _watch_running(scene: Scene, node: str, stop: asyncio.Event) -> dict[str, float | None]:
    """When a peer stopped, and started again, listing ``node`` as running."""
    peers = [n for n in scene.cluster.nodes if n.name != node]
    seen: dict[str, float | None] = {"down": None, "up": None}
    while not stop.is_set():
        running = None
        for peer in peers:
            with contextlib.suppress(Exception):
                running = node in await asyncio.to_thread(control.running_seen_by, peer.management_url)
                break
        now = time.monotonic()
        if running is False and seen["down"] is None:
            seen["down"] = now
        elif running and seen["down"] is not None and seen["up"] is None:
            seen["up"] = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return seen


async def hang(run: Run, opts: ClusterOptions, name: str) -> Outcome:
    async with http_session(opts.users * 4 + 64) as http:
        scene = Scene(run, opts, name, http)
        await scene.open()
        target, where = await scene.place(worker=False, leader=True)
        if target is None:
            return await scene.finish()
        victim = scene.node(target)
        await scene.start_load()
        where = await control.placement(scene.cluster, [*scene.apis, *scene.workers])
        peers = [n.management_url for n in scene.cluster.nodes if n.name != target]
        watch = control.ConnectionWatch([*scene.apis, *scene.workers], peers)
        health = {a.name: control.HealthWatch(a) for a in scene.apis}
        watch.start()
        for h in health.values():
            h.start(http)
        scene.start_probes()
        # One answer longer than the hang and what follows it, queued on the API whose node
        # hangs: a session under way at SIGCONT whatever the intake does meanwhile.
        hung_url = next(
            (u for u, a in zip(scene.urls, scene.apis, strict=False) if where.get(a.name) == target),
            scene.urls[0],
        )
        long_answer = Answer(int((opts.fault_s + opts.after_s + 5.0) * opts.answer.tps), opts.answer.tps)
        across = asyncio.create_task(scene.clients.sse(hung_url, scene.urls, answer=long_answer))
        await asyncio.sleep(1.0)
        scene.facts["in_flight_at_fault"] = scene.clients.in_flight()
        stop_watching = asyncio.Event()
        scene.fault_at, scene.fault_epoch = time.monotonic(), time.time()
        await asyncio.to_thread(scene.cluster.pause, victim)
        scene.say(f"SIGSTOP {scene.short(victim.name)}")
        running = asyncio.create_task(_watch_running(scene, target, stop_watching))
        elected = asyncio.create_task(
            control.new_leader(scene.cluster, scene.task_queue, target, scene.fault_at)
        )
        await wait_until(scene.fault_at + opts.fault_s)
        resumed_at = time.monotonic()
        await asyncio.to_thread(scene.cluster.resume, victim)
        scene.say(f"SIGCONT {scene.short(victim.name)}")
        scene.facts["in_flight_at_resume"] = scene.clients.in_flight()
        await asyncio.sleep(opts.after_s)
        stop_watching.set()
        seen = await running
        elected.cancel()
        new = None
        with contextlib.suppress(asyncio.CancelledError):
            new = await elected
        await watch.stop()
        for h in health.values():
            await h.stop()
        moved = moves(scene, watch, health, target, where, must_move=False)
        with contextlib.suppress(Exception):
            split = await asyncio.to_thread(control.partitions, scene.cluster)
            scene.facts["partitions_after_resume"] = {
                scene.short(k): [scene.short(n) for n in v] for k, v in split.items()
            }
        scene.facts["connections_seen"] = connections_seen(scene, watch)
        intake = scene.intake_facts(where)
        hung_api = next(
            (p.label for p, a in zip(scene.probes, scene.apis, strict=False) if where.get(a.name) == target),
            None,
        )
        others = [p.label for p in scene.probes if p.label != hung_api]
        scene.facts.update(
            fault_node=scene.short(target),
            fault="SIGSTOP",
            hang_s=round(resumed_at - scene.fault_at, 1),
            placement={k: scene.short(v) for k, v in where.items()},
            moved=moved,
            reconnect_s=reconnect_s(moved),
            peers_saw_down_s=scene.at(seen["down"]),
            peers_saw_up_s=scene.at(seen["up"]),
            new_leader=scene.short(new[1]) if new else None,
            new_leader_seen_s=rounded(new[0]) if new else None,
            hung_api=hung_api,
            refused_on_hung_api_s=intake["intake"].get(hung_api, {}).get("longest_refused_s")
            if hung_api
            else None,
            refused_on_other_api_s=max(
                (intake["intake"][o]["longest_refused_s"] for o in others), default=None
            ),
            **intake,
            **scene.stall_facts(scene.fault_at, resumed_at + opts.after_s),
        )
        judged_after = [
            s
            for s in scene.clients.sessions
            if s.accepted_at < resumed_at and not _ended_before(s, resumed_at)
        ]
        scene.facts["under_way_at_resume"] = len(judged_after)
        long_session = await across
        scene.facts["long_session_accepted"] = isinstance(long_session, Session)
        if hung_api is None:
            scene.problems.append("no API process sat on the hung node")
        if not scene.facts["in_flight_at_fault"]:
            scene.problems.append("no session was under way when the node was hung")
        return await scene.finish()


def _ended_before(session: Session, moment: float) -> bool:
    return session.ended_at is not None and session.ended_at < moment


# -- cluster-rolling ------------------------------------------------------------------------------


async def rolling(run: Run, opts: ClusterOptions, name: str) -> Outcome:
    async with http_session(opts.users * 4 + 64) as http:
        scene = Scene(run, opts, name, http)
        await scene.open()
        await scene.start_load()
        where = await control.placement(scene.cluster, [*scene.apis, *scene.workers])
        scene.start_probes()
        await asyncio.sleep(1.0)
        scene.fault_at, scene.fault_epoch = time.monotonic(), time.time()
        steps = []
        for node in scene.cluster.nodes:
            step: dict[str, Any] = {"node": scene.short(node.name), "stop_at_s": scene.at(time.monotonic())}
            began = time.monotonic()
            await asyncio.to_thread(scene.cluster.stop_app, node)
            step["stop_app_s"] = round(time.monotonic() - began, 2)
            scene.say(f"stop_app {scene.short(node.name)} ({step['stop_app_s']:g} s)")
            began = time.monotonic()
            step["start_at_s"] = scene.at(began)
            await asyncio.to_thread(scene.cluster.start_app, node)
            step["start_app_s"] = round(time.monotonic() - began, 2)
            scene.say(f"start_app {scene.short(node.name)} ({step['start_app_s']:g} s)")
            members = await control.members_back(scene.cluster, scenario_queues(scene))
            step["members_back_s"] = rounded(members)
            step["done_at_s"] = scene.at(time.monotonic())
            if members is None:
                scene.problems.append(f"the queues' members were not all back after {step['node']}")
            steps.append(step)
            await asyncio.sleep(opts.fault_s)
        ended = time.monotonic()
        await asyncio.sleep(opts.after_s)
        intake = scene.intake_facts(where)
        gaps = [
            {
                "api": label,
                "from_s": start,
                "length_s": length,
                "refused": count,
                "during": _during(start, steps),
            }
            for label, api in intake["intake"].items()
            for start, length, count in api["refused_spans"]
        ]
        scene.facts.update(
            fault="rolling",
            steps=steps,
            gaps=gaps,
            rolling_s=round(ended - scene.fault_at, 1),
            **intake,
            **scene.stall_facts(scene.fault_at, ended),
        )
        return await scene.finish()


def _during(start: float, steps: list[dict[str, Any]]) -> str:
    """Which step of the rolling restart a gap began in (seconds after the first stop_app)."""
    if not steps or start < steps[0]["stop_at_s"]:
        return "before"
    for step in reversed(steps):
        if start >= step["stop_at_s"]:
            if start < step["start_at_s"]:
                return f"{step['node']} stop_app"
            if start < step["done_at_s"]:
                return f"{step['node']} start_app"
            return f"after {step['node']}"
    return "?"


# -- cluster-partition (containers) ---------------------------------------------------------------


async def partition(run: Run, opts: ClusterOptions, name: str) -> Outcome:
    async with http_session(opts.users * 4 + 64) as http:
        scene = Scene(run, opts, name, http)
        await scene.open()
        target, where = await scene.place(worker=True, leader=True)
        if target is None:
            return await scene.finish()
        victim = scene.node(target)
        await scene.start_load()
        where = await control.placement(scene.cluster, [*scene.apis, *scene.workers])
        peers = [n.management_url for n in scene.cluster.nodes if n.name != target]
        watch = control.ConnectionWatch([*scene.apis, *scene.workers], peers)
        health = {a.name: control.HealthWatch(a) for a in scene.apis}
        watch.start()
        for h in health.values():
            h.start(http)
        scene.start_probes()
        await asyncio.sleep(1.0)
        scene.facts["in_flight_at_fault"] = scene.clients.in_flight()
        scene.fault_at, scene.fault_epoch = time.monotonic(), time.time()
        await asyncio.to_thread(scene.cluster.partition, victim)
        scene.say(f"{scene.short(victim.name)} cut off the network")
        paused = asyncio.create_task(asyncio.to_thread(scene.cluster.wait_paused, victim))
        await wait_until(scene.fault_at + opts.fault_s)
        paused_s: float | None = None
        with contextlib.suppress(Exception):
            paused_s = await asyncio.wait_for(paused, 60)
        healed_at = time.monotonic()
        await asyncio.to_thread(scene.cluster.heal, victim)
        scene.say(f"{scene.short(victim.name)} back on the network and in the cluster")
        back_s = round(time.monotonic() - healed_at, 2)
        members = await control.members_back(scene.cluster, scenario_queues(scene))
        await asyncio.sleep(opts.after_s)
        await watch.stop()
        for h in health.values():
            await h.stop()
        moved = moves(scene, watch, health, target, where)
        scene.facts["connections_seen"] = connections_seen(scene, watch)
        scene.facts.update(
            fault_node=scene.short(target),
            fault="network partition",
            cut_s=round(healed_at - scene.fault_at, 1),
            placement={k: scene.short(v) for k, v in where.items()},
            moved=moved,
            reconnect_s=reconnect_s(moved),
            minority_paused_after_s=rounded(paused_s),
            healed_back_s=back_s,
            members_back_s=rounded(members),
            **scene.intake_facts(where),
            **scene.stall_facts(scene.fault_at, healed_at + back_s),
        )
        if paused_s is None:
            scene.failures.append(
                ("broker", f"the cut-off node {scene.short(target)} did not pause (pause_minority)")
            )
        return await scene.finish()
