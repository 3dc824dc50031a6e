"""The cluster scenarios: the stack on a three-node RabbitMQ cluster while a node fails.

The run starts one cluster (``tests/support/rabbitmq_cluster.py``: ``--broker-kind node``, the
host's RabbitMQ 3.10; ``container``, RabbitMQ 4.0 in podman) and every scenario shares it,
each with queue and exchange names of its own; every node is brought back, with no
partition, before and after each scenario (:func:`cluster_control.restore`). The API and
worker processes reach the cluster through its balancer (HAProxy, one address), or with
``--node-list`` through the list of node URLs. Each scenario drives the load of the
``broker`` scenario (``scenarios.closed_loop``: SSE, ``POST /chat`` and the SDK, refused users
honouring ``Retry-After``), is judged by the same oracle, and measures what the fault did
(:mod:`cluster_measures`): an intake probe on every API process, the slowest refused POST,
the first POST accepted after the fault, the longest stall between two frames of a session
under way, where the processes' connections went and when.

- ``cluster-kill-leader``: SIGKILL the node leading the task queue; start it again ``fault_s``
  later;
- ``cluster-kill-connected``: SIGKILL a node that an API process and a worker sit on;
- ``cluster-hang``: SIGSTOP the node of one API process's connection (and, when it can be
  arranged, the task queue's leader) for ``fault_s``, then SIGCONT;
- ``cluster-rolling``: ``stop_app``, ``start_app`` of each node in turn, each back with its
  queues' members before the next;
- ``cluster-stream-leader``: SIGKILL in turn each node leading one of the streams (history,
  cancels, queue log), under a queued backlog, cancels and resumes on the other API process;
- ``cluster-partition`` (containers only): cut a node off the network for ``fault_s``, heal.
"""

from __future__ import annotations

import argparse
from typing import Any

from clients import Answer
from cluster_scenarios import hang, kill_connected, kill_leader, partition, rolling
from cluster_scene import ClusterOptions
from cluster_streams import stream_leader
from scenarios import Outcome

__all__ = [
    "NAMES",
    "PREFIX",
    "SCENARIOS",
    "ClusterOptions",
    "chosen",
    "fault_line",
    "options",
    "print_figures",
]

PREFIX = "cluster"
NAMES = (
    "cluster-kill-leader",
    "cluster-kill-connected",
    "cluster-hang",
    "cluster-rolling",
    "cluster-stream-leader",
    "cluster-partition",
)
CONTAINER_ONLY = ("cluster-partition",)

# (full, short) per scenario; the common ones first.
COMMON: dict[str, tuple[Any, Any]] = {
    "sessions": (20_000, 20_000),
    "users": (30, 12),
    "tokens": (30, 20),
    "tps": (20, 20),
    "workers": (2, 2),
    "apis": (2, 2),
    "rate": (10.0, 5.0),
    "deadline_s": (120, 120),
    "time_limit_s": (600, 400),
    "before_s": (10.0, 4.0),
    "fault_s": (20.0, 5.0),
    "after_s": (15.0, 5.0),
    "backlog": (0, 0),
    "concurrency": (0, 0),
}
DEFAULTS: dict[str, dict[str, tuple[Any, Any]]] = {
    "cluster-kill-leader": {},
    "cluster-kill-connected": {"apis": (3, 3)},
    "cluster-hang": {"apis": (3, 3), "fault_s": (30.0, 15.0), "after_s": (15.0, 8.0)},
    "cluster-rolling": {"before_s": (5.0, 3.0), "fault_s": (2.0, 1.0), "after_s": (10.0, 5.0)},
    "cluster-stream-leader": {
        "users": (6, 4),
        "tokens": (20, 20),
        "tps": (10, 10),
        "backlog": (60, 24),
        "concurrency": (3, 3),
    },
    "cluster-partition": {"apis": (3, 3), "fault_s": (20.0, 10.0), "after_s": (15.0, 8.0)},
}


def options(scenario: str, args: argparse.Namespace) -> ClusterOptions:
    size = 1 if args.short else 0
    chosen = {name: values[size] for name, values in {**COMMON, **DEFAULTS[scenario]}.items()}
    for name in ("sessions", "users", "tokens", "tps", "workers", "deadline_s", "fault_s"):
        if getattr(args, name, None) is not None:
            chosen[name] = getattr(args, name)
    return ClusterOptions(
        sessions=chosen["sessions"],
        users=chosen["users"],
        answer=Answer(int(chosen["tokens"]), float(chosen["tps"])),
        deadline_s=chosen["deadline_s"],
        time_limit_s=chosen["time_limit_s"],
        workers=chosen["workers"],
        mix=args.mix,
        retry_s=args.retry_s,
        probe_every_s=0.2,
        apis=chosen["apis"],
        rate=chosen["rate"],
        before_s=chosen["before_s"],
        fault_s=chosen["fault_s"],
        after_s=chosen["after_s"],
        node_list=args.node_list,
        backlog=chosen["backlog"],
        concurrency=chosen["concurrency"],
    )


def plan(scenario: str, opts: ClusterOptions) -> str:
    """What the scenario will do, in a few words."""
    load = f"{opts.users} users at most {opts.rate:g} POSTs/s, {opts.apis} APIs, {opts.workers} workers"
    if scenario == "cluster-rolling":
        return f"{load}; each node's application stopped and started in turn"
    backlog = f", a backlog of {opts.backlog}" if opts.backlog else ""
    timeline = f"the fault {opts.before_s:g} s in, for {opts.fault_s:g} s, then {opts.after_s:g} s more"
    return f"{load}{backlog}; {timeline}"


def chosen(names: list[str], kind: str) -> tuple[list[str], list[str]]:
    """The cluster scenarios of ``names`` (``cluster``: all of them) that run on ``kind``, and
    notes on those left out."""
    picked: list[str] = []
    notes = []
    for name in names:
        for scenario in NAMES if name == PREFIX else (name,):
            if scenario in CONTAINER_ONLY and kind != "container":
                if name != PREFIX:
                    raise ValueError(f"{scenario} needs --broker-kind container (a network to cut)")
                notes.append(f"{scenario} left out: it needs --broker-kind container")
                continue
            if scenario not in picked:
                picked.append(scenario)
    return picked, notes


SCENARIOS = {
    "cluster-kill-leader": kill_leader,
    "cluster-kill-connected": kill_connected,
    "cluster-hang": hang,
    "cluster-rolling": rolling,
    "cluster-stream-leader": stream_leader,
    "cluster-partition": partition,
}


# -- output ----------------------------------------------------------------------------------------

FIGURES = (
    ("fault", "fault"),
    ("node", "node"),
    ("first ok", "first_ok"),
    ("intake back", "back"),
    ("refused span", "refused"),
    ("slowest 503", "slow_503"),
    ("reconnect", "reconnect"),
    ("stall", "stall"),
)


def figures(outcome: Outcome) -> dict[str, str]:
    """The row of the cluster table: what was done to which node, and the measured times."""
    f = outcome.facts

    def s(value: Any) -> str:
        return "-" if value is None else f"{value:g} s" if isinstance(value, int | float) else str(value)

    held = f.get("down_s") or f.get("hang_s") or f.get("cut_s") or f.get("rolling_s")
    return {
        "fault": f"{f.get('fault', '?')}" + (f" {held:g} s" if held else ""),
        "node": str(f.get("fault_node", "all")),
        "first_ok": s(f.get("first_accepted_after_fault_s")),
        "back": s(f.get("intake_back_s")),
        "refused": s(f.get("longest_refused_s")),
        "slow_503": s(f.get("slowest_refused_post_s")),
        "reconnect": s(f.get("reconnect_s")),
        "stall": s(f.get("longest_stall_s")),
    }


def print_figures(outcomes: list[Outcome]) -> None:
    rows = [(o.scenario, figures(o)) for o in outcomes if o.kind.startswith(PREFIX)]
    if not rows:
        return
    widths = {key: max(len(title), *(len(r[key]) for _, r in rows)) for title, key in FIGURES}
    width = max(8, *(len(name) for name, _ in rows))
    header = f"{'scenario':<{width}} " + " ".join(f"{title:>{widths[key]}}" for title, key in FIGURES)
    print("\n" + header)
    print("-" * len(header))
    for name, row in rows:
        print(f"{name:<{width}} " + " ".join(f"{row[key]:>{widths[key]}}" for _, key in FIGURES))


class _Facts(dict):  # type: ignore[type-arg]
    """Facts for ``str.format_map``: a fact the scenario did not record reads ``-``."""

    def __missing__(self, key: str) -> str:
        return "-"


HEADS = {
    "cluster-kill-leader": (
        "SIGKILL of {fault_node}, the task queue's leader, with {in_flight_at_fault} sessions under way; "
        "down {down_s} s; new leader {new_leader} seen {new_leader_seen_s} s after; restart {restart_s} s, "
        "members back {members_back_s} s"
    ),
    "cluster-kill-connected": (
        "SIGKILL of {fault_node} (holding {on_fault_node}); down {down_s} s; restart {restart_s} s, "
        "members back {members_back_s} s"
    ),
    "cluster-hang": (
        "SIGSTOP of {fault_node} for {hang_s} s (task queue's leader there: {leader_on_fault_node}); "
        "peers saw it down at {peers_saw_down_s} s; refused on its API {refused_on_hung_api_s} s, on the "
        "others {refused_on_other_api_s} s; partitions after SIGCONT {partitions_after_resume}"
    ),
    "cluster-rolling": "stop_app, start_app of each node in turn: {rolling_s} s",
    "cluster-stream-leader": (
        "SIGKILL in turn of {fault_node}; {resumed_elsewhere} of {resumers} readers resumed on the other "
        "API; {cancelled} of {cancels_asked} cancels ended cancelled (latency max {cancel_latency_max_s} s, "
        "{cancel_refusals} refused, {cancel_too_late} too late)"
    ),
    "cluster-partition": (
        "{fault_node} cut off for {cut_s} s; the minority paused after {minority_paused_after_s} s; back "
        "{healed_back_s} s after the heal, members {members_back_s} s"
    ),
}
COMMON_LINE = (
    "first POST accepted {first_accepted_after_fault_s} s after the fault, intake back at {intake_back_s} s; "
    "slowest refused POST {slowest_refused_post_s} s ({refused_posts} refused), slowest accepted "
    "{slowest_accepted_post_s} s; longest stall {longest_stall_s} s ({stalled_over_10s} over 10 s of "
    "{stall_sessions_timed})"
)
INTAKE_LINE = "{label} on {node}: {refused} of {probes} probes refused, longest {longest_refused_s} s"
MOVE_LINE = (
    "{name}: lost its connection at {lost_connection_s} s, seen on {seen_on} at {seen_after_s} s, ready "
    "again {ready_again_s} s, working again {working_again_s} s"
)
STEP_LINE = (
    "{node}: stop_app {stop_app_s} s, start_app {start_app_s} s, members back {members_back_s} s "
    "(done at {done_at_s} s)"
)
GAP_LINE = "gap on {api}: {length_s} s from {from_s} s ({during})"
ROUND_LINE = (
    "{node} leading {led} killed at {killed_s} s with {waiting_at_kill} of {backlog} waiting; "
    "{positions_after_kill} got positions after it (longest silence {longest_position_silence_s} s); "
    "restart {restart_s} s"
)


def fault_line(outcome: Outcome) -> str:
    """What the fault was and did, in one line (``details`` gives the figures under it)."""
    return HEADS.get(outcome.kind, outcome.kind).format_map(_Facts(outcome.facts))


def details(outcome: Outcome) -> list[str]:
    """The measured figures of a cluster scenario, a line each."""
    f = outcome.facts
    lines = [COMMON_LINE.format_map(_Facts(f))]
    lines += [INTAKE_LINE.format_map(_Facts(api, label=label)) for label, api in f.get("intake", {}).items()]
    lines += [MOVE_LINE.format_map(_Facts(m, name=name)) for name, m in f.get("moved", {}).items()]
    lines += [STEP_LINE.format_map(_Facts(step)) for step in f.get("steps", [])]
    lines += [GAP_LINE.format_map(_Facts(gap)) for gap in f.get("gaps", [])]
    lines += [ROUND_LINE.format_map(_Facts(r, led=", ".join(r["led"]))) for r in f.get("rounds", [])]
    return lines
