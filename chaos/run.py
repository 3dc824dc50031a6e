"""llm-stream under faults: load, SIGKILLed workers, a broker restart, a killed API process.

    uv run python chaos/run.py                      # all three scenarios, full size (make chaos)
    uv run python chaos/run.py --short              # small numbers, about a minute
    uv run python chaos/run.py --pools              # the three with two model pools
    uv run python chaos/run.py --short --scenario all,workers-pools   # what make test runs
    uv run python chaos/run.py --scenario broker --sessions 300 --outage-s 5
    uv run python chaos/run.py --cluster            # the cluster scenarios, RabbitMQ 3.10 (host)
    uv run python chaos/run.py --cluster --broker-kind container   # the same on RabbitMQ 4.0
    uv run python chaos/run.py --short --scenario cluster-kill-leader,cluster-hang   # make test's
    uv run python chaos/run.py --help

It starts a private RabbitMQ node (never the machine's broker), a mock LLM, and for each
scenario API and worker processes of its own; every accepted session is judged by the oracle
(chaos/oracle.py). It prints a table of counts per scenario (and per pool) and exits 1 when any
session or refusal failed, when a fault did not happen as planned, or when a scenario left a
queue or an exchange on the broker. chaos/README.md explains the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The harness reuses the benchmark's process control and the tests' private RabbitMQ node.
sys.path[:0] = [str(HERE), str(ROOT / "bench"), str(ROOT / "tests")]

import cluster  # noqa: E402
from clients import Answer  # noqa: E402
from pools import Pools  # noqa: E402
from scenarios import SCENARIOS, Options, Outcome, Run  # noqa: E402
from stack import Stack, free_port  # noqa: E402

ORDER = ("workers", "api", "broker")
"""The broker scenarios last: they restart the node the others run on."""
POOLS = "-pools"
"""The suffix of a scenario's variant with two model pools (``workers-pools``)."""
NAMES = (*ORDER, *(f"{kind}{POOLS}" for kind in ORDER))
MOCK_TTFT_MS = 100

# (full, short) sizes per scenario.
DEFAULTS: dict[str, dict[str, tuple[Any, Any]]] = {
    "workers": {
        "sessions": (1000, 60), "users": (60, 20), "tokens": (30, 20), "tps": (20, 20),
        "workers": (4, 3), "min_kills": (26, 3), "deadline_s": (60, 120), "time_limit_s": (300, 300),
    },
    "broker": {
        "sessions": (600, 50), "users": (30, 12), "tokens": (30, 20), "tps": (20, 20),
        "workers": (2, 2), "outage_s": (10.0, 3.0), "deadline_s": (90, 120), "time_limit_s": (300, 300),
    },
    "api": {
        "sessions": (120, 16), "users": (0, 0), "tokens": (60, 40), "tps": (10, 10),
        "workers": (2, 2), "deadline_s": (60, 120), "time_limit_s": (120, 300),
    },
}
# The -pools variants: the same, except these. Workers: two per pool, so that a kill in either
# pool leaves it one serving; short: 4 kills, two per pool (the kills alternate).
POOL_DEFAULTS: dict[str, dict[str, tuple[Any, Any]]] = {
    "workers": {"workers": (4, 4), "min_kills": (26, 4)},
    "broker": {},
    "api": {},
}


def kind_of(scenario: str) -> str:
    return scenario.removesuffix(POOLS)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="chaos/run.py",
        description="Drive load through llm-stream while killing its processes; judge every session.",
    )
    p.add_argument(
        "--scenario", default=None,
        help=f"comma-separated, of {', '.join(NAMES)} and all (the first three) (default: all); or of "
        f"{', '.join(cluster.NAMES)} and cluster (all of those that run on the broker kind)",
    )
    p.add_argument(
        "--cluster", action="store_true",
        help="the cluster scenarios on a three-node cluster (default scenario: cluster)",
    )
    p.add_argument(
        "--broker-kind", choices=("node", "container"), default="node",
        help="cluster: node = the host's RabbitMQ (3.10), container = RabbitMQ 4.0 in podman (default: node)",
    )
    p.add_argument(
        "--node-list", action="store_true",
        help="cluster: the processes get the nodes' URLs (RABBIT_MQ=url1,url2,url3), not the balancer's",
    )
    p.add_argument("--fault-s", type=float, help="cluster: seconds a node stays down, hung or cut off")
    p.add_argument(
        "--net-ticktime", type=int,
        help="cluster: the nodes' net_ticktime, which bounds how long a hung node takes to be "
        "declared down (default 10 s)",
    )
    p.add_argument(
        "--pools", action="store_true",
        help="run each chosen scenario with two model pools (its -pools variant) instead of none",
    )
    p.add_argument("--short", action="store_true", help="small numbers (the version make test runs)")
    p.add_argument(
        "--sessions", type=int, help="accepted sessions per scenario (api: half read the killed process)"
    )
    p.add_argument("--users", type=int, help="concurrent users (workers, broker)")
    p.add_argument("--tokens", type=int, help="answer length in tokens")
    p.add_argument("--tps", type=float, help="answer pace, tokens per second")
    p.add_argument("--workers", type=int, help="worker processes per scenario")
    p.add_argument("--min-kills", type=int, help="workers: fewest SIGKILLs for the run to count")
    p.add_argument("--kill-every", default="1,2", help="workers: seconds between kills, 'low,high'")
    p.add_argument("--outage-s", type=float, help="broker: seconds the broker stays down")
    p.add_argument("--deadline-s", type=float, help="seconds an accepted session may take to end")
    p.add_argument("--mix", default="sse=6,sync=3,openai=1", help="client kinds and their weights")
    p.add_argument("--retry-s", type=float, default=0.5, help="SSE reconnection delay after a drop")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--show", type=int, default=20, help="failures listed per scenario")
    args = p.parse_args(argv)
    try:
        low, high = (float(x) for x in args.kill_every.split(","))
        args.kill_every = (low, high)
    except ValueError:
        p.error(f"--kill-every: expected 'low,high' seconds, got {args.kill_every!r}")
    try:
        args.mix = {k: float(v) for k, v in (item.split("=") for item in args.mix.split(",") if item)}
    except ValueError:
        p.error(f"--mix: expected kind=weight,..., got {args.mix!r}")
    if unknown := set(args.mix) - {"sse", "sync", "openai"}:
        p.error(f"--mix: unknown client kinds {sorted(unknown)}")
    given = [item.strip() for item in (args.scenario or "").split(",") if item.strip()]
    in_cluster = [name for name in given if name == cluster.PREFIX or name in cluster.NAMES]
    args.cluster = args.cluster or bool(in_cluster)
    args.notes = []
    if args.cluster:
        if len(in_cluster) != len(given):
            p.error("--scenario: the cluster scenarios run on their own (not with workers, api, broker)")
        if args.pools:
            p.error("--pools: the cluster scenarios have no two-pool variants")
        try:
            args.scenarios, args.notes = cluster.chosen(in_cluster or [cluster.PREFIX], args.broker_kind)
        except ValueError as exc:
            p.error(f"--scenario: {exc}")
        if not args.scenarios:
            p.error("--scenario: no cluster scenario runs on this broker kind")
        return args
    chosen: list[str] = []
    for name in given or ["all"]:
        if name not in (*NAMES, "all"):
            p.error(f"--scenario: unknown scenario {name!r} (of {', '.join(NAMES)}, all)")
        for scenario in ORDER if name == "all" else (name,):
            if args.pools and not scenario.endswith(POOLS):
                scenario += POOLS
            if scenario not in chosen:
                chosen.append(scenario)
    if not chosen:
        p.error("--scenario: no scenario")
    # Stable: the broker scenarios after the others, each group in the order given.
    args.scenarios = sorted(chosen, key=lambda s: kind_of(s) == "broker")
    if "workers" + POOLS in chosen and args.workers is not None and args.workers < 4:
        p.error("--workers: workers-pools needs at least 4 (two per pool: a kill leaves one serving)")
    return args


def options(scenario: str, args: argparse.Namespace) -> Options:
    if scenario in cluster.SCENARIOS:
        return cluster.options(scenario, args)
    size = 1 if args.short else 0
    kind = kind_of(scenario)
    pools = scenario.endswith(POOLS)
    defaults = {**DEFAULTS[kind], **(POOL_DEFAULTS[kind] if pools else {})}
    chosen = {name: values[size] for name, values in defaults.items()}
    for name in ("sessions", "users", "tokens", "tps", "workers", "min_kills", "outage_s", "deadline_s"):
        if getattr(args, name, None) is not None and name in chosen:
            chosen[name] = getattr(args, name)
    return Options(
        sessions=chosen["sessions"],
        users=chosen["users"],
        answer=Answer(int(chosen["tokens"]), float(chosen["tps"])),
        deadline_s=chosen["deadline_s"],
        time_limit_s=chosen["time_limit_s"],
        workers=chosen["workers"],
        mix=args.mix if kind != "api" else {"sse": 1},
        retry_s=args.retry_s,
        kill_every=args.kill_every,
        min_kills=chosen.get("min_kills", 1),
        outage_s=chosen.get("outage_s", 10.0),
        pools=Pools() if pools else None,
    )


# -- output ------------------------------------------------------------------------------------


def fault_line(outcome: Outcome) -> str:
    f = outcome.facts
    if outcome.kind.startswith(cluster.PREFIX):
        return cluster.fault_line(outcome)
    if outcome.kind == "workers":
        by_pool = f.get("kills_by_pool")
        split = f" ({', '.join(f'{p} {n}' for p, n in by_pool.items())})" if by_pool else ""
        return (
            f"{f.get('worker_kills', 0)} worker SIGKILLs{split} ({f.get('kills_mid_answer', 0)} with answers "
            f"under way) among {f.get('workers')} workers"
        )
    if outcome.kind == "broker":
        back = f.get("intake_back_s")
        return (
            f"broker down {f.get('broker_down_s')} s; {f.get('refused', 0)} POSTs refused with 503 "
            f"({f.get('refused_while_down', 0)} while down, {outcome.tally.refused_by_probe} by the "
            f"intake probe); intake back {'never' if back is None else f'{back} s'} after the broker"
        )
    return (
        f"API process SIGKILLed with {f.get('mid_answer_at_kill', 0)} of its "
        f"{f.get('readers_on_killed', 0)} readers mid-answer; {f.get('resumed_on_other', 0)} "
        f"resumed on the other process"
    )


def pool_line(pool: str, t: Any, facts: dict[str, Any]) -> str:
    lanes = ", ".join(f"{lane} {n}" for lane, n in facts.get("lanes", {}).items())
    kills = f"; {facts['worker_kills']} of the kills" if "worker_kills" in facts else ""
    return (
        f"  pool {pool}: {t.accepted} judged (lanes: {lanes or 'none'}), {t.correct} correct, "
        f"{t.error_count} error, {len(t.failures)} failed{kills}; "
        f"generations started again: {facts.get('redelivered_generations', 0)}"
    )


def print_report(outcomes: list[Outcome], show: int) -> None:
    width = max(9, *(len(o.scenario) for o in outcomes)) if outcomes else 9
    header = (
        f"{'scenario':<{width}} {'accepted':>8} {'correct':>8} {'error':>6} {'failed':>7} {'resumed':>8} "
        f"{'refused':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for o in outcomes:
        rows = [(o.scenario, o.tally), *((f"  {pool}", t) for pool, t in o.pools.items())]
        for label, t in rows:
            print(
                f"{label:<{width}} {t.accepted:>8} {t.correct:>8} {t.error_count:>6} {len(t.failures):>7} "
                f"{t.resumed:>8} {sum(t.refused.values()):>8}"
            )
    cluster.print_figures(outcomes)
    print()
    for o in outcomes:
        t = o.tally
        clients = ", ".join(f"{n} {k}" for k, n in sorted(t.by_client.items()))
        print(f"{o.scenario}: {fault_line(o)}; {o.wall_s:.0f} s; sessions: {clients or 'none'}")
        if o.kind.startswith(cluster.PREFIX):
            for line in cluster.details(o):
                print(f"  {line}")
        for pool, counts in o.pools.items():
            print(pool_line(pool, counts, o.pool_facts.get(pool, {})))
        for message, count in t.errors.most_common():
            print(f"  error event x{count}: {message}")
        for sid, what in t.failures[:show]:
            print(f"  FAILED {sid}: {what}")
        if len(t.failures) > show:
            print(f"  ... and {len(t.failures) - show} more failures (see the JSON)")
        for problem in o.problems:
            print(f"  FAULT NOT AS PLANNED: {problem}")
        for left in o.leftovers:
            print(f"  LEFT ON THE BROKER: {left}")


# -- run ---------------------------------------------------------------------------------------


async def run_all(args: argparse.Namespace, run: Run, chosen: list[str]) -> list[Outcome]:
    outcomes = []
    for scenario in chosen:
        opts = options(scenario, args)
        pools = f" over pools {', '.join(opts.pools.names)}" if opts.pools else ""
        if isinstance(opts, cluster.ClusterOptions):
            print(f"{scenario}: {cluster.plan(scenario, opts)} ...", flush=True)
        else:
            print(f"{scenario}: {opts.sessions} sessions{pools} ...", flush=True)
        if scenario in cluster.SCENARIOS:
            outcome = await cluster.SCENARIOS[scenario](run, opts, scenario)  # type: ignore[arg-type]
        else:
            outcome = await SCENARIOS[kind_of(scenario)](run, opts, scenario)
        t = outcome.tally
        split = "; ".join(f"{p} {c.accepted}" for p, c in outcome.pools.items())
        print(
            f"{scenario}: {t.correct} correct, {t.error_count} error, {len(t.failures)} failed of "
            f"{t.accepted} accepted{f' ({split})' if split else ''} in {outcome.wall_s:.0f} s",
            flush=True,
        )
        outcomes.append(outcome)
    return outcomes


async def start_mock(stack: Stack) -> str:
    port = free_port()
    mock = stack.start(
        "mock", "llm-stream-mockllm",
        {"MOCK_HOST": "127.0.0.1", "MOCK_PORT": str(port), "MOCK_TTFT_MS": str(MOCK_TTFT_MS),
         "MOCK_LOG_LEVEL": "warning"},
        f"http://127.0.0.1:{port}/health",
    )
    await stack.wait_ready([mock], timeout=60)
    return f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from integration.support.restartable_broker import NodeError, RestartableNode

    chosen: list[str] = args.scenarios
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    run_id = secrets.token_hex(3)
    log_dir = Path(tempfile.mkdtemp(prefix=f"llm-stream-chaos-{run_id}-"))
    print(f"chaos run {run_id}, seed {seed}, logs in {log_dir}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on the way out

    began = time.monotonic()
    if args.cluster:
        return main_cluster(args, chosen, seed, run_id, log_dir, began)
    node = RestartableNode()
    stack = Stack(run_id, log_dir)
    outcomes: list[Outcome] = []
    try:
        try:
            broker = node.start()
        except NodeError as exc:
            print(f"no private RabbitMQ node: {exc}", file=sys.stderr)
            return 2
        print(f"broker: {broker.description}, ready in {node.node.started_in_s:.1f} s", flush=True)

        async def go() -> list[Outcome]:
            mock_url = await start_mock(stack)
            run = Run(
                run_id, log_dir, stack, node, broker.amqp_url, broker.management_url or "",
                mock_url, random.Random(seed),
            )
            return await run_all(args, run, chosen)

        outcomes = asyncio.run(go())
    finally:
        stack.stop()
        if node.node.dir is not None:
            shutil.copytree(Path(node.node.dir) / "log", log_dir / "rabbitmq", dirs_exist_ok=True)
        node.stop()

    results: dict[str, Any] = {}
    if any(s.endswith(POOLS) for s in chosen):
        results["llm_pools"] = json.loads(Pools().llm_pools("<mock>/v1"))
    return report(args, outcomes, results, seed, run_id, log_dir, began)


def main_cluster(
    args: argparse.Namespace, chosen: list[str], seed: int, run_id: str, log_dir: Path, began: float
) -> int:
    """The cluster scenarios: one cluster for the run, shared by the scenarios."""
    from support.clusters import cluster_for
    from support.rabbitmq_node import NodeError

    import cluster_control

    for note in args.notes:
        print(note, flush=True)
    stack = Stack(run_id, log_dir)
    outcomes: list[Outcome] = []
    reach = "node list" if args.node_list else "balancer"
    broker: dict[str, Any] = {"kind": args.broker_kind, "processes_reach": reach}
    try:
        with cluster_for(args.broker_kind, args.net_ticktime) as nodes:
            broker.update(
                version=nodes.version, nodes=[n.name for n in nodes.nodes],
                net_ticktime=getattr(nodes, "net_ticktime", None),
            )
            started = getattr(nodes, "started_in_s", None) or 0.0
            print(
                f"broker: a {len(nodes.nodes)}-node RabbitMQ {nodes.version} cluster ({args.broker_kind}), "
                f"ready in {started:.1f} s; the processes reach it through the {reach}", flush=True,
            )

            async def go() -> list[Outcome]:
                mock_url = await start_mock(stack)
                run = Run(
                    run_id, log_dir, stack, nodes, nodes.balanced_url, nodes.nodes[0].management_url,
                    mock_url, random.Random(seed),
                )
                return await run_all(args, run, chosen)

            try:
                outcomes = asyncio.run(go())
            finally:
                stack.stop()
                cluster_control.save_logs(nodes, log_dir / "rabbitmq")
    except NodeError as exc:
        print(f"no RabbitMQ cluster: {exc}", file=sys.stderr)
        return 2
    return report(args, outcomes, {"broker": broker}, seed, run_id, log_dir, began)


def report(
    args: argparse.Namespace, outcomes: list[Outcome], extra: dict[str, Any], seed: int, run_id: str,
    log_dir: Path, began: float,
) -> int:
    print_report(outcomes, args.show)
    failed = sum(len(o.tally.failures) for o in outcomes)
    problems = sum(len(o.problems) for o in outcomes)
    left = sum(len(o.leftovers) for o in outcomes)
    results = {
        "run_id": run_id, "seed": seed, "short": args.short, "wall_s": round(time.monotonic() - began, 1),
        "log_dir": str(log_dir), **extra, "scenarios": {o.scenario: o.as_dict() for o in outcomes},
    }
    for path in filter(None, (log_dir / "chaos.json", args.json)):
        path.write_text(json.dumps(results, indent=2) + "\n")
    verdict = "PASS" if not failed and not problems and not left else "FAIL"
    print(
        f"\n{verdict}: {failed} failures, {problems} faults not as planned, {left} left on the broker; "
        f"{time.monotonic() - began:.0f} s; details in {log_dir / 'chaos.json'}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
