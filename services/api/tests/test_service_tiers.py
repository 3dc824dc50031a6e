"""Service tiers per key: defaults, what a key may ask for, and a clear 403 otherwise."""

from __future__ import annotations

import pytest
from llm_stream_api.protocol.errors import Forbidden
from llm_stream_api.quota.service_tiers import TierPolicy

POLICY = (
    '{"batch": {"default": "flex", "allowed": ["flex"]},'
    ' "*": {"default": "default", "allowed": ["default", "flex"]}}'
)


def test_no_policy_gives_every_tier_and_default() -> None:
    policy = TierPolicy.parse("")
    assert policy.choose(None, None) == "default" and policy.choose("k", "priority") == "priority"


def test_a_keys_default_and_auto() -> None:
    policy = TierPolicy.parse(POLICY)
    assert policy.choose("batch", None) == policy.choose("batch", "auto") == "flex"
    assert policy.choose("someone", "auto") == "default"


def test_a_tier_the_key_may_not_use_is_refused_naming_the_field() -> None:
    policy = TierPolicy.parse(POLICY)
    with pytest.raises(Forbidden) as refused:
        policy.choose("batch", "priority")
    assert refused.value.status == 403 and refused.value.param == "service_tier"
    assert "allowed: flex" in refused.value.message
    with pytest.raises(Forbidden):
        policy.choose(None, "priority")  # keys off: the '*' rule


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[1]", "must be an object"),
        ('{"a": {"allowed": ["gold"]}}', "allowed must list"),
        ('{"a": {"default": "priority", "allowed": ["flex"]}}', "must be one of its allowed"),
        ("{", "not JSON"),
    ],
)
def test_a_bad_policy_stops_the_start(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TierPolicy.parse(text)
