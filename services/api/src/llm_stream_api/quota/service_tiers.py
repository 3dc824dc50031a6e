"""Service tiers: which lane of its pool a request waits in, and who may ask for which.

OpenAI's ``service_tier`` (natively a field of the same name) is ``priority``, ``default`` or
``flex``; ``auto`` and no value mean the key's default. ``KEY_SERVICE_TIERS`` gives each key
id (``*``: every key, and every request while keys are off) its default tier and the tiers it
may use: a tier it may not use is refused with 403. A pool without the tier's lane serves the
request in its default lane (``mqcommon.pools.Pool.lane_for``).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from mqcommon.pools import LANES

from llm_stream_api.protocol.errors import Forbidden

AUTO = "auto"
TIERS = (*LANES, AUTO)
ANY_KEY = "*"


@dataclass(frozen=True, slots=True)
class TierRule:
    default: str = "default"
    allowed: tuple[str, ...] = LANES


class TierPolicy:
    def __init__(self, rules: dict[str, TierRule]) -> None:
        self._rules = rules
        self._any = rules.get(ANY_KEY, TierRule())

    @classmethod
    def parse(cls, text: str) -> TierPolicy:
        """``{"<key id>|*": {"default": "flex", "allowed": ["flex", "default"]}}``; empty: every
        key may use every tier, and gets ``default``. Raises ``ValueError`` naming the entry."""
        if not text.strip():
            return cls({})
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"KEY_SERVICE_TIERS is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                'KEY_SERVICE_TIERS must be an object: {"<key id>": {"default": ..., "allowed": [...]}}'
            )
        rules = {}
        for key_id, entry in data.items():
            if not isinstance(entry, dict):
                raise ValueError(f"KEY_SERVICE_TIERS[{key_id!r}] must be an object")
            allowed = entry.get("allowed", list(LANES))
            default = entry.get("default", "default")
            if not (isinstance(allowed, list) and allowed and all(tier in LANES for tier in allowed)):
                raise ValueError(f"KEY_SERVICE_TIERS[{key_id!r}].allowed must list tiers of {list(LANES)}")
            if default not in allowed:
                raise ValueError(
                    f"KEY_SERVICE_TIERS[{key_id!r}].default ({default!r}) must be one of its allowed tiers"
                )
            rules[key_id] = TierRule(default, tuple(tier for tier in LANES if tier in allowed))
        return cls(rules)

    def choose(self, key_id: str | None, requested: str | None) -> str:
        """The tier a request gets; raises ``Forbidden`` for one its key may not use."""
        rule = self._rules.get(key_id, self._any) if key_id is not None else self._any
        if requested is None or requested == AUTO:
            return rule.default
        if requested not in rule.allowed:
            who = f"the key {key_id!r}" if key_id is not None else "this deployment"
            raise Forbidden(
                f"service_tier {requested!r} is not available to {who}; allowed: {', '.join(rule.allowed)}",
                param="service_tier", code="service_tier_not_allowed",
            )
        return requested
