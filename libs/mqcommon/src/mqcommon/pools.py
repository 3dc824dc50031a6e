"""Model pools and their lanes: which task queue a request waits in (docs/adr/0006).

A **pool** serves some models with its own workers; a **lane** is a service tier inside a pool
(``priority``, ``default``, ``flex``). Each (pool, lane) is a **line**: one task queue with its
own intake, queue log, keeper and bound, named after the pool and the lane so that the default
pool's default lane keeps today's names. ``LLM_POOLS`` (JSON, or the path of a JSON file) is
read alike by the API and every worker; without it there is one pool, ``default``, with one
lane, serving whatever model a request names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mqcommon.settings import BrokerSettings

LANES = ("priority", "default", "flex")  # highest first
DEFAULT_LANE = "default"
DEFAULT_POOL = "default"
# Suffixes the topology derives from a queue name, and the lanes: a pool named so would collide.
RESERVED_NAMES = frozenset({
    "priority", "flex", "dead", "log", "intake", "keeper", "watermarks", "positions", "notices",
    "events", "cancels",
})
S = TypeVar("S", bound=BrokerSettings)
POOL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
SHARD_SUFFIX = re.compile(r"^s[0-9]+$")  # shard i > 0 of a line is '<queue>.s<i>' (TASK_SHARDS)


class PoolsError(ValueError):
    """``LLM_POOLS`` cannot be read or says something impossible."""


class Pool(BaseModel):
    """One pool as ``LLM_POOLS`` describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    models: tuple[str, ...] = ()
    aliases: dict[str, str] = Field(default_factory=dict)
    default: bool = False
    lanes: tuple[str, ...] = (DEFAULT_LANE,)
    base_url: str | None = None
    concurrency: int | None = Field(default=None, ge=1, le=2000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not POOL_NAME.match(value):
            raise ValueError(f"pool name {value!r} is not a lower-case DNS label of at most 32 characters")
        if value in RESERVED_NAMES or SHARD_SUFFIX.match(value):
            raise ValueError(f"pool name {value!r} is reserved (a lane, a shard or a queue suffix)")
        return value

    @field_validator("lanes")
    @classmethod
    def _lanes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [lane for lane in value if lane not in LANES]
        if unknown:
            raise ValueError(f"unknown lane(s) {unknown}: lanes are {list(LANES)}")
        if DEFAULT_LANE not in value:
            raise ValueError("a pool's lanes must include 'default'")
        return tuple(lane for lane in LANES if lane in value)  # highest first, once each

    @model_validator(mode="after")
    def _aliases_name_models(self) -> Pool:
        for alias, model in self.aliases.items():
            if model not in self.models:
                raise ValueError(
                    f"alias {alias!r} of pool {self.name!r} names {model!r}, not one of its models"
                )
        return self

    def lane_for(self, tier: str | None) -> str:
        """The lane a service tier waits in: its own if the pool has it, else the default."""
        return tier if tier in self.lanes else DEFAULT_LANE


@dataclass(frozen=True, slots=True)
class Line:
    """One task queue: a lane of a pool."""

    pool: str
    lane: str
    queue: str  # the task queue; every other name of the line is derived from it

    @property
    def rank(self) -> int:
        """0 for the highest lane."""
        return LANES.index(self.lane)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: its pool, its lane and the model id the upstream is asked for."""

    pool: Pool
    line: Line
    model: str | None


class ModelNotServed(LookupError):
    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(model)
        self.model = model
        self.served = served


class PoolMap:
    """Every pool of a release, and which one serves which model."""

    def __init__(self, pools: list[Pool], *, configured: bool, task_queue: str = "llm.tasks",
                 dead_letter_queue: str = "llm.tasks.dead", shards: int = 1) -> None:
        if not pools:
            raise PoolsError("LLM_POOLS names no pool")
        names = [pool.name for pool in pools]
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise PoolsError(f"LLM_POOLS names a pool twice: {twice}")
        defaults = [pool.name for pool in pools if pool.default]
        if len(defaults) > 1:
            raise PoolsError(f"more than one default pool: {defaults}")
        self.pools = {pool.name: pool for pool in pools}
        self.configured = configured
        self.default = self.pools[defaults[0]] if defaults else pools[0]
        self._task_queue = task_queue
        self._dead_letter_queue = dead_letter_queue
        self.shards = shards
        self._models: dict[str, tuple[Pool, str]] = {}
        for pool in pools:
            for name, model in [(m, m) for m in pool.models] + list(pool.aliases.items()):
                other = self._models.get(name)
                if other is not None and other[0].name != pool.name:
                    raise PoolsError(
                        f"model {name!r} is claimed by pools {other[0].name!r} and {pool.name!r}"
                    )
                self._models[name] = (pool, model)

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> PoolMap:
        text = settings.llm_pools.strip()
        pools = parse(text) if text else [Pool(name=DEFAULT_POOL)]
        return cls(pools, configured=bool(text), task_queue=settings.task_queue,
                   dead_letter_queue=settings.dead_letter_queue, shards=settings.task_shards)

    # -- names ---------------------------------------------------------------------------------

    def queue(self, pool: str, lane: str = DEFAULT_LANE) -> str:
        base = self._task_queue if pool == DEFAULT_POOL else f"{self._task_queue}.{pool}"
        return base if lane == DEFAULT_LANE else f"{base}.{lane}"

    def shard_queues(self, line: Line) -> list[str]:
        """The task queues of ``line``'s shards, shard 0 (the line's own name) first."""
        return [line.queue, *(f"{line.queue}.s{index}" for index in range(1, self.shards))]

    def dead_letter_queue(self, pool: str) -> str:
        return self._dead_letter_queue if pool == DEFAULT_POOL else f"{self._task_queue}.{pool}.dead"

    def lines(self, pool: str | None = None) -> list[Line]:
        """Every line (of ``pool``, or of all), highest lane first within a pool."""
        chosen = [self.pools[pool]] if pool is not None else list(self.pools.values())
        return [Line(p.name, lane, self.queue(p.name, lane)) for p in chosen for lane in p.lanes]

    def line(self, pool: str, lane: str = DEFAULT_LANE) -> Line:
        return Line(pool, lane, self.queue(pool, lane))

    def line_settings(self, settings: S, line: Line) -> S:
        """``settings`` with the names of ``line``: its queue, and its pool's dead letters."""
        if line.queue == settings.task_queue:
            return settings  # today's line, names as configured
        return settings.model_copy(update={
            "task_queue": line.queue,
            "intake_exchange": f"{line.queue}.intake",
            "queue_log_stream": f"{line.queue}.log",
            "dead_letter_queue": self.dead_letter_queue(line.pool),
        })

    # -- routing -------------------------------------------------------------------------------

    def route(self, model: str | None, tier: str | None = None) -> Route:
        """The pool, lane and upstream model of a request; raises ``ModelNotServed``.

        No model: the default pool. Without ``LLM_POOLS`` every model goes to the one pool, as
        before pools existed, and the upstream judges the name."""
        if model is None or not self.configured:
            pool, upstream = self.default, model
            if model is None and self.configured and pool.models:
                upstream = pool.models[0]  # what the pool answers a request that names no model
        else:
            found = self._models.get(model)
            if found is None:
                raise ModelNotServed(model, self.model_ids())
            pool, upstream = found
        return Route(pool, self.line(pool.name, pool.lane_for(tier)), upstream)

    def model_ids(self) -> list[str]:
        """Every model id and alias a configured pool serves, in configuration order."""
        return list(self._models)

    def pool_of_model(self, model: str) -> Pool | None:
        found = self._models.get(model)
        return found[0] if found else None


def parse(text: str) -> list[Pool]:
    """``LLM_POOLS``: a JSON object ``{"pools": [...]}`` or list, or the path of a file of it."""
    source = "LLM_POOLS"
    if not text.lstrip().startswith(("{", "[")):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as exc:
            raise PoolsError(f"LLM_POOLS file {path} cannot be read: {exc.strerror or exc}") from exc
        source = str(path)
    try:
        data: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PoolsError(f"{source} is not JSON: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("pools")
    if not isinstance(data, list):
        raise PoolsError(f'{source} must be {{"pools": [...]}} or a list of pools')
    pools = []
    for index, item in enumerate(data):
        try:
            pools.append(Pool.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'pool'}: {error['msg']}" for error in exc.errors()
            )
            raise PoolsError(f"{source}: pool {index}: {problems}") from exc
    return pools
