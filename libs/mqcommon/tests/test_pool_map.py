"""Model pools: names, routing and what LLM_POOLS may not say (docs/adr/0006)."""

from __future__ import annotations

import pytest
from mqcommon.pools import Line, PoolMap, PoolsError, parse
from mqcommon.settings import BrokerSettings

TWO_POOLS = """{"pools": [
  {"name": "small", "default": true, "models": ["llama-8b"], "aliases": {"fast": "llama-8b"},
   "lanes": ["flex", "default", "priority"]},
  {"name": "large", "models": ["llama-70b"], "base_url": "http://large:8000/v1", "concurrency": 8}
]}"""


def pools(text: str = TWO_POOLS, **env: str) -> PoolMap:
    return PoolMap.from_settings(BrokerSettings(llm_pools=text, **env))


def test_without_pools_one_default_pool_serves_every_model_on_todays_queue() -> None:
    found = pools("")
    assert not found.configured and list(found.pools) == ["default"]
    route = found.route("anything-at-all", "priority")
    assert route.line == Line("default", "default", "llm.tasks") and route.model == "anything-at-all"
    assert found.dead_letter_queue("default") == "llm.tasks.dead"
    settings = BrokerSettings()
    assert found.line_settings(settings, route.line) is settings  # today's names, untouched


def test_pool_and_lane_names_derive_from_the_task_queue() -> None:
    found = pools(TASK_QUEUE="q")
    queues = [line.queue for line in found.lines()]
    assert queues == ["q.small.priority", "q.small", "q.small.flex", "q.large"]
    named = found.line_settings(BrokerSettings(task_queue="q"), found.line("small", "flex"))
    assert (named.task_queue, named.intake_exchange, named.queue_log_stream, named.dead_letter_queue) == (
        "q.small.flex", "q.small.flex.intake", "q.small.flex.log", "q.small.dead",
    )


def test_routing_by_model_alias_and_tier() -> None:
    found = pools()
    assert found.route("fast", "flex").line.queue == "llm.tasks.small.flex"
    assert found.route("fast", "flex").model == "llama-8b"  # the upstream is asked for the real id
    assert found.route("llama-70b", "priority").line.queue == "llm.tasks.large"  # no such lane there
    default = found.route(None)
    assert default.pool.name == "small" and default.model == "llama-8b"
    with pytest.raises(LookupError) as refused:
        found.route("gpt-5")
    assert refused.value.served == ["llama-8b", "fast", "llama-70b"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[{"name": "a", "models": ["m"]}, {"name": "b", "models": ["m"]}]', "claimed by pools 'a' and 'b'"),
        ('[{"name": "a", "models": ["m"]}, {"name": "b", "aliases": {"m": "x"}, "models": ["x"]}]',
         "claimed"),
        ('[{"name": "a"}, {"name": "a"}]', "names a pool twice"),
        ('[{"name": "a", "default": true}, {"name": "b", "default": true}]', "more than one default"),
        ('[{"name": "flex"}]', "reserved"),
        ('[{"name": "Big_Pool"}]', "DNS label"),
        ('[{"name": "a", "lanes": ["priority"]}]', "must include 'default'"),
        ('[{"name": "a", "lanes": ["default", "gold"]}]', "unknown lane"),
        ('[{"name": "a", "models": ["m"], "aliases": {"x": "n"}}]', "not one of its models"),
        ('[{"name": "a", "colour": "red"}]', "colour"),
        ("[]", "names no pool"),
        ("{not json", "not JSON"),
        ("/nonexistent/pools.json", "cannot be read"),
    ],
)
def test_what_llm_pools_may_not_say(text: str, says: str) -> None:
    with pytest.raises(PoolsError, match=says.replace("(", r"\(")):
        PoolMap(parse(text), configured=True)


def test_a_pools_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "pools.json"
    path.write_text(TWO_POOLS)
    assert list(pools(str(path)).pools) == ["small", "large"]
