"""The two pools of ``--pools``: what the sessions ask for, where their tasks must go, the names."""

from __future__ import annotations

from collections import Counter

from mqcommon.pools import PoolMap
from mqcommon.settings import BrokerSettings

from pools import Picker, Pools, Target, misrouted
from topology import Names

TASKS = "chaos.r-workers-pools.tasks"


def env(prefix: str = "chaos.r-workers-pools.") -> dict[str, str]:
    """The names ``bench/stack.py`` gives a scenario."""
    return {
        "TASK_QUEUE": f"{prefix}tasks", "EVENTS_STREAM": f"{prefix}events",
        "CANCELS_STREAM": f"{prefix}cancels",
        "LIVE_EXCHANGE": f"{prefix}live", "PRESENCE_EXCHANGE": f"{prefix}presence",
        "WORKERS_EXCHANGE": f"{prefix}workers", "DEAD_LETTER_EXCHANGE": f"{prefix}dlx",
        "DEAD_LETTER_QUEUE": f"{prefix}dead",
    }


def test_the_sessions_take_the_pools_and_their_tiers_in_turn() -> None:
    pools = Pools()
    picker = Picker(pools)
    picked = [picker() for _ in range(16)]
    assert Counter(t.pool for t in picked) == {"alpha": 8, "beta": 8}
    assert [t.pool for t in picked[:4]] == ["alpha", "beta", "alpha", "beta"]
    lanes = Counter(pools.lane(t) for t in picked if t.pool == "alpha")
    assert lanes == {"priority": 2, "default": 4, "flex": 2}  # no tier and "default" share a lane
    assert {t.model for t in picked} == {"alpha-1", "beta-1"}


def test_a_tier_the_pool_has_no_lane_for_waits_in_its_default_lane() -> None:
    pools = Pools()
    assert pools.lane(Target("beta", "beta-1", "priority")) == "default"
    assert pools.lane(Target("alpha", "alpha-1", "flex")) == "flex"
    assert pools.lane(Target("alpha", "alpha-1", None)) == "default"


def test_the_names_are_those_mqcommon_gives_the_same_pools() -> None:
    pools = Pools()
    ours = pools.lines(TASKS)
    theirs = PoolMap.from_settings(
        BrokerSettings(llm_pools=pools.llm_pools("http://mock/v1"), task_queue=TASKS)
    )
    assert set(ours) == {line.queue for line in theirs.lines()}
    assert {(line.pool, line.lane) for line in theirs.lines()} == set(ours.values())
    assert pools.dead_letter_queues(TASKS) == {p: theirs.dead_letter_queue(p) for p in theirs.pools}
    assert theirs.route("beta-1", "flex").line.queue == f"{TASKS}.beta"
    assert theirs.route("alpha-1", "flex").line.queue == f"{TASKS}.alpha.flex"


def test_the_clean_up_covers_every_line_and_dead_letter_queue() -> None:
    names = Names.of(env(), Pools())
    queues, exchanges = set(names.queues()), set(names.exchanges())
    for line in ("alpha", "alpha.priority", "alpha.flex", "beta"):
        queue = f"{TASKS}.{line}"
        assert {queue, f"{queue}.log", f"{queue}.watermarks"} <= queues
        assert {f"{queue}.intake", f"{queue}.positions"} <= exchanges
    for pool in ("alpha", "beta"):
        assert {f"{TASKS}.{pool}.dead", f"{TASKS}.{pool}.dead.notices"} <= queues
    assert all(name.startswith(names.prefix) for name in queues | exchanges)
    assert names.prefix == "chaos.r-workers-pools."
    assert not Names.of(env("chaos.r-workers.")).lines


def test_where_a_session_went_is_judged() -> None:
    lines = Pools().lines(TASKS)
    flex, alpha, beta = f"{TASKS}.alpha.flex", f"{TASKS}.alpha", f"{TASKS}.beta"
    assert misrouted("alpha", flex, {flex}, {"alpha"}, lines) is None
    assert misrouted("alpha", flex, {flex}, set(), lines) is None  # no generation logged: not judged
    wrong_lane = misrouted("alpha", flex, {alpha}, {"alpha"}, lines)
    assert "waited in alpha/default, not in alpha/flex" in str(wrong_lane)
    assert "in no line's queue log" in str(misrouted("beta", beta, set(), {"beta"}, lines))
    assert "a worker of pool alpha" in str(misrouted("beta", beta, {beta}, {"alpha", "beta"}, lines))
    assert "alpha/default, beta/default" in str(misrouted("beta", beta, {alpha, beta}, {"beta"}, lines))
