"""Generation slots shared by the lanes of a pool (service tiers, docs/adr/0006).

A worker consumes every lane of its pool, each with a prefetch of its concurrency (shared by
the lane's shards, ``TASK_SHARDS``), and a task starts only once it holds one of the
``WORKER_CONCURRENCY`` slots. A freed slot goes to the highest lane with a task waiting, except
that the lowest lane, while it has one waiting, gets at least one start in every
``1 / LANE_MIN_SHARE``: it is never starved. A worker with one lane of one shard has no gate.
"""

from __future__ import annotations

import asyncio
from collections import deque


class LaneGate:
    def __init__(self, slots: int, lanes: int, min_share: float) -> None:
        self._free = slots
        self._waiting: list[deque[asyncio.Future[None]]] = [deque() for _ in range(lanes)]
        self._lowest = lanes - 1
        self._every = max(1, round(1 / min_share))
        self._since_lowest = 0  # starts of higher lanes since the lowest lane's last one

    @property
    def free(self) -> int:
        return self._free

    def waiting(self, rank: int) -> int:
        return sum(1 for future in self._waiting[rank] if not future.done())

    async def acquire(self, rank: int) -> None:
        """Wait for a slot as a task of lane ``rank`` (0: the highest)."""
        if self._free > 0 and not any(self._waiting):
            self._take(rank)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[rank].append(future)
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted as it was cancelled: pass the slot on
            else:
                future.cancel()
            raise

    def release(self) -> None:
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        while self._free > 0:
            for queue in self._waiting:
                while queue and queue[0].done():
                    queue.popleft()  # cancelled while waiting
            rank = self._next()
            if rank is None:
                return
            self._take(rank)
            self._waiting[rank].popleft().set_result(None)

    def _next(self) -> int | None:
        if self._waiting[self._lowest] and self._since_lowest >= self._every - 1:
            return self._lowest
        return next((rank for rank, queue in enumerate(self._waiting) if queue), None)

    def _take(self, rank: int) -> None:
        self._free -= 1
        self._since_lowest = 0 if rank == self._lowest else self._since_lowest + 1
