"""Two model pools for a chaos run (``--pools``; docs/adr/0006, "a line per lane").

``alpha`` (the default pool) serves ``alpha-1`` with the three lanes, ``beta`` serves
``beta-1`` with the default lane only; both ask the run's mock LLM, which answers any model
name the same way, so the oracle's expected answers do not depend on the pool. The API and
every worker get ``LLM_POOLS``; worker ``i`` serves pool ``i mod 2`` (``LLM_POOL``).

The sessions take the pools in turn, and each pool's sessions its tiers in turn
(:class:`Picker`, so that a short run covers every lane). A session records its pool and tier;
its task must wait in the line of that pool and tier (the tier's lane if the pool has it, else
the pool's default lane), and only that pool's workers may generate it (:func:`misrouted`).

Names are the ADR's, derived here independently of ``mqcommon``: pool ``p`` of ``TASK_QUEUE``
``t`` has the lines ``t.p`` and ``t.p.<lane>`` and the dead letters ``t.p.dead``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

LANES = ("priority", "default", "flex")
DEFAULT_LANE = "default"


@dataclass(frozen=True, slots=True)
class Target:
    """What a session asks for: a pool's model and a service tier (None: neither is sent)."""

    pool: str
    model: str | None
    tier: str | None


PLAIN = Target("", None, None)
"""A session of a run without pools: no ``model`` (native), no ``service_tier``."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    model: str
    lanes: tuple[str, ...]
    tiers: tuple[str | None, ...]
    """What its sessions ask for, equally often (None: no ``service_tier``, the key's default)."""
    default: bool = False

    def lane(self, tier: str | None) -> str:
        return tier if tier in self.lanes else DEFAULT_LANE


ALPHA = PoolSpec("alpha", "alpha-1", LANES, (None, "priority", "default", "flex"), default=True)
BETA = PoolSpec("beta", "beta-1", (DEFAULT_LANE,), (None, "priority"))
"""``priority`` asked of a pool without that lane: the request waits in its default lane."""


@dataclass(frozen=True, slots=True)
class Pools:
    specs: tuple[PoolSpec, ...] = (ALPHA, BETA)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def spec(self, pool: str) -> PoolSpec:
        return next(spec for spec in self.specs if spec.name == pool)

    def llm_pools(self, base_url: str) -> str:
        """``LLM_POOLS`` for the API and the workers, every pool asking ``base_url``."""
        pools = []
        for spec in self.specs:
            pool: dict[str, object] = {
                "name": spec.name, "models": [spec.model], "lanes": list(spec.lanes), "base_url": base_url,
            }
            if spec.default:
                pool["default"] = True
            pools.append(pool)
        return json.dumps({"pools": pools})

    def worker_pool(self, index: int) -> str:
        return self.specs[index % len(self.specs)].name

    def lane(self, target: Target) -> str:
        return self.spec(target.pool).lane(target.tier)

    # -- names ---------------------------------------------------------------------------------

    @staticmethod
    def line(task_queue: str, pool: str, lane: str = DEFAULT_LANE) -> str:
        base = f"{task_queue}.{pool}"
        return base if lane == DEFAULT_LANE else f"{base}.{lane}"

    def lines(self, task_queue: str) -> dict[str, tuple[str, str]]:
        """Every line's task queue, and its (pool, lane)."""
        return {
            self.line(task_queue, spec.name, lane): (spec.name, lane)
            for spec in self.specs for lane in spec.lanes
        }

    def dead_letter_queues(self, task_queue: str) -> dict[str, str]:
        """Each pool's dead-letter queue."""
        return {spec.name: f"{task_queue}.{spec.name}.dead" for spec in self.specs}


class Picker:
    """What the next session asks for: the pools in turn, and each pool's tiers in turn."""

    def __init__(self, pools: Pools) -> None:
        self._pools: Iterator[PoolSpec] = itertools.cycle(pools.specs)
        self._tiers = {spec.name: itertools.cycle(spec.tiers) for spec in pools.specs}

    def __call__(self) -> Target:
        spec = next(self._pools)
        return Target(spec.name, spec.model, next(self._tiers[spec.name]))


def misrouted(
    pool: str, line: str, queued_in: set[str], generated_by: set[str], names: dict[str, tuple[str, str]]
) -> str | None:
    """What is wrong with where a session of ``pool`` went, its task due in ``line``: the lines
    whose queue log shows its task, and the pools of the workers whose logs show it generated.
    None when all is as it should be. A task seen in no line's log is wrong too; a session whose
    generation no log shows is not judged on that (a worker killed before it wrote the line)."""
    if not queued_in:
        return f"misrouted: its task is in no line's queue log (due in {_label(line, names)})"
    if queued_in != {line}:
        seen = ", ".join(_label(q, names) for q in sorted(queued_in))
        return f"misrouted: its task waited in {seen}, not in {_label(line, names)}"
    if others := generated_by - {pool}:
        return f"misrouted: generated by a worker of pool {', '.join(sorted(others))}, not {pool}"
    return None


def _label(queue: str, names: dict[str, tuple[str, str]]) -> str:
    if queue in names:
        pool, lane = names[queue]
        return f"{pool}/{lane}"
    return queue
