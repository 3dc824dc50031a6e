"""Every waiting line of the release on this replica: a keeper and positions per task queue.

A line is one task queue, a lane of a model pool (docs/adr/0006): each has its own queue log,
keeper, watermark, bound and drain rate, so the machinery of one line
(``broker.queue_keeper``, ``broker.queue_positions``) runs once per line, unchanged. Without
pools there is one line, today's. ``Lines`` is what the session service sees: admission per
line, and the positions of a session in the line it waits in, which a reader on another
replica learns from the session's ``accepted`` record or, before that, from the first keeper
that finds it waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel
from mqcommon.pools import Line, PoolMap
from mqcommon.schemas import Positions, Watch
from mqcommon.topology import Topology

from llm_stream_api.broker.connection import BrokerConnection
from llm_stream_api.broker.heartbeats import WorkerRegistry
from llm_stream_api.broker.queue_depth import QueueDepth
from llm_stream_api.broker.queue_keeper import QueueKeeper
from llm_stream_api.broker.queue_positions import QueuePositions
from llm_stream_api.sessions.hub import Session, SessionHub


@dataclass(slots=True)
class LineParts:
    line: Line
    keeper: QueueKeeper
    positions: QueuePositions


class Lines:
    def __init__(
        self, broker: BrokerConnection, hub: SessionHub, pools: PoolMap, depth: QueueDepth,
        workers: WorkerRegistry | None = None,
    ) -> None:
        """``workers``: the heartbeats, to tell a pool scaled to zero (its first task waits for
        a worker to start, and its ETA includes the measured start time)."""
        self.pools = pools
        self._workers = workers
        self._broker = broker
        self._by_queue: dict[str, LineParts] = {}
        for line in pools.lines():
            settings = pools.line_settings(broker.settings, line)
            name = broker.add_line(Topology.from_settings(settings))

            async def ready(name: str = name, pool: str = line.pool) -> int:
                # What the queues hold, and what workers hold delivered but not started yet:
                # those are still in the line.
                held = workers.summary(pool).holds if workers is not None else 0
                return (await depth.task_queue(name)).messages + held

            keeper = QueueKeeper(broker, ready, line=name)
            positions = QueuePositions(broker, hub, keeper.on_watch, heard=keeper.heard, line=name)
            keeper.deliver_locally, keeper.watermark_locally = positions.on_positions, positions.on_watermark
            self._by_queue[name] = LineParts(line, keeper, positions)
        self.default = self._by_queue[broker.topology.task_queue.name]

    @property
    def many(self) -> bool:
        return len(self._by_queue) > 1

    def __iter__(self) -> Iterator[LineParts]:
        return iter(self._by_queue.values())

    def get(self, queue: str | None) -> LineParts:
        return self._by_queue.get(queue or "", self.default)

    async def start(self, channel: AbstractChannel) -> None:
        """Follow every line's watermarks (on one channel)."""
        for parts in self._by_queue.values():
            await parts.positions.start(channel)

    def run_keepers(self) -> None:
        for name, parts in self._by_queue.items():
            self._broker.run_in_background(f"queue-keeper:{name}", parts.keeper.run_forever())

    # -- what the live feed delivers -------------------------------------------------------

    def on_watch(self, watch: Watch, line: str | None) -> None:
        self.get(line).keeper.on_watch(watch)

    def on_positions(self, answer: Positions, line: str | None) -> None:
        self.get(line).positions.on_positions(answer)

    # -- what readers ask (``service.follow.Positions``) -------------------------------------

    def watch(self, session: Session) -> None:
        """Watch the session in its line; in every line while nobody has said which."""
        if session.line is not None or not self.many:
            self.get(session.line).positions.watch(session)
            return
        for parts in self._by_queue.values():
            parts.positions.watch(session)

    def unwatch(self, session: Session) -> None:
        for parts in self._by_queue.values():
            parts.positions.unwatch(session)

    def eta(self, position: int, session: Session | None = None) -> float | None:
        parts = self.get(session.line if session else None)
        eta = parts.positions.eta(position)
        if session is None or self.waiting_for(session) is None:
            return eta
        start = self._workers.start_estimate(parts.line.pool) if self._workers else None
        if start is None:
            return eta
        return round(start + (eta or 0.0), 1)

    def waiting_for(self, session: Session) -> str | None:
        if self._workers is None:
            return None
        return "worker_start" if self._workers.absent(self.get(session.line).line.pool) else None
