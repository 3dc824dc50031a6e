"""``chaos/run.py --short``: the three fault scenarios with small numbers, judged by the oracle,
and the worker kills again with two model pools (``workers-pools``).

The run starts its own RabbitMQ node (it restarts it), mock LLM, API and worker processes; this
test checks its JSON results: no session or refusal failed, and every fault really happened
(workers died of SIGKILL mid-answer and their tasks were generated again elsewhere, the broker
was seen down and back with POSTs refused meanwhile, the API process died of SIGKILL with
readers mid-answer who resumed on the other one). With pools, every session is also judged on
where it went (its pool's line for its tier, its pool's workers), both pools and every lane had
sessions, and the kills hit workers of both pools. No scenario left a queue or an exchange on
the broker. ``make chaos`` is the full-size run (``CHAOS_ARGS=--pools``: the three with pools).

Only the workers scenario runs with pools here, to keep ``make test`` short: it adds 20 to 35 s
on a 2-core machine, and it is the one where the pools change the fault (kills in both pools,
tasks delivered again within a pool, every lane under kills). ``api-pools`` would add 12 to
16 s and ``broker-pools`` 20 to 30 s more; ``chaos/run.py --short --pools`` runs all three.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Generous: a busy machine slows the run (its faults wait for events), it must not fail it.
RUN_TIMEOUT_S = 1500
SCENARIOS = "all,workers-pools"
POOLED = ["workers-pools"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("chaos") / "chaos.json"
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "chaos" / "run.py"), "--short", "--scenario", SCENARIOS,
             "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"chaos/run.py --short did not finish within {RUN_TIMEOUT_S} s:\n{exc.stdout}")
    if not out.exists():
        pytest.fail(
            f"chaos/run.py --short wrote no results (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    data = json.loads(out.read_text())
    data["output"] = done.stdout[-6000:]
    data["returncode"] = done.returncode
    return data


def scenario(results: dict, name: str) -> dict:
    assert name in results["scenarios"], f"scenario {name} did not run:\n{results['output']}"
    return results["scenarios"][name]


@pytest.mark.parametrize("name", ["workers", "api", "broker", *POOLED])
def test_every_accepted_session_is_exact_or_ends_with_an_error(results: dict, name: str) -> None:
    counts = scenario(results, name)
    assert counts["accepted"] > 0, results["output"]
    listed = "\n".join(f"{f['session']}: {f['what']}" for f in counts["failures"][:10])
    assert not counts["failures"], (
        f"{len(counts['failures'])} of {counts['accepted']} {name} sessions failed "
        f"(logs: {results['log_dir']}):\n{listed}"
    )
    assert counts["correct"] + sum(counts["errors"].values()) == counts["accepted"]
    assert not counts["problems"], counts["problems"]
    assert not counts["leftovers"], f"left on the broker: {counts['leftovers']}"


@pytest.mark.parametrize("name", POOLED)
def test_each_pool_and_lane_had_sessions_and_each_is_judged(results: dict, name: str) -> None:
    counts = scenario(results, name)
    pools = counts["pools"]
    assert set(pools) == {"alpha", "beta"}, pools.keys()
    assert sum(p["accepted"] for p in pools.values()) == counts["accepted"]
    for pool, each in pools.items():
        assert each["accepted"] > 0, (pool, each)
        assert not each["failures"], (pool, each["failures"][:10])
        assert each["correct"] + sum(each["errors"].values()) == each["accepted"], (pool, each)
    assert all(pools["alpha"]["lanes"][lane] > 0 for lane in ("priority", "default", "flex")), pools["alpha"]
    assert set(pools["beta"]["lanes"]) == {"default"}, pools["beta"]


@pytest.mark.parametrize("name", ["workers", "workers-pools"])
def test_workers_were_killed_mid_answer(results: dict, name: str) -> None:
    facts = scenario(results, name)["facts"]
    assert facts["worker_kills"] >= 3, facts
    assert facts["killed_by_sigkill"] == facts["worker_kills"], facts
    assert facts["kills_mid_answer"] >= 1, facts
    # The kills interrupted generations: their tasks were delivered again to another worker.
    assert facts["redelivered_generations"] >= 1, facts
    if name.endswith("-pools"):
        assert facts["kills_by_pool"].keys() == {"alpha", "beta"}, facts
        pools = scenario(results, name)["pools"]
        # Each pool lost a worker while a session of its own was under way.
        assert all(pools[p]["kills_mid_answer"] >= 1 for p in ("alpha", "beta")), pools


def test_the_broker_was_down_and_new_work_was_refused_meanwhile(results: dict) -> None:
    counts = scenario(results, "broker")
    facts = counts["facts"]
    assert facts["broker_down_s"] and facts["broker_down_s"] >= 3.0, facts
    assert facts["in_flight_at_stop"] >= 1, facts
    assert facts["refused_while_down"] >= 1, facts
    assert facts["accepted_while_down"] == 0, facts
    assert set(counts["refused"]) <= {"503 broker_unavailable"}, counts["refused"]
    assert facts["intake_back_s"] is not None, facts


def test_readers_of_the_killed_api_process_resumed_on_the_other(results: dict) -> None:
    counts = scenario(results, "api")
    facts = counts["facts"]
    assert facts["api_killed_returncode"] == -signal.SIGKILL, facts
    assert facts["mid_answer_at_kill"] >= 1, facts
    assert facts["resumed_on_other"] == facts["mid_answer_at_kill"], facts
    assert counts["resumed"] >= facts["resumed_on_other"], counts


def test_the_run_exits_non_zero_only_on_failures(results: dict) -> None:
    failed = any(s["failures"] or s["problems"] or s["leftovers"] for s in results["scenarios"].values())
    assert results["returncode"] == (1 if failed else 0), results["output"]
