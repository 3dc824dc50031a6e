"""Admission control: a bounded queue and a bounded number of streams per process.

Past a bound the answer is 503 ``overloaded`` with a ``Retry-After`` computed from the
backlog and the drain rate measured here (tasks leaving the queue, streams closing): the
seconds until enough of the backlog has drained to make room, not a constant. Nothing
accepted is dropped to make room: the queue refuses new tasks (the broker enforces the same
bound with ``reject-publish``), it never drops old ones.

The stream bound counts streams open in this process; requests that arrive in the same
instant are checked before any of them opens, so a burst can pass the bound by the few
requests in flight at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from llm_stream_api.protocol.errors import Overloaded
from llm_stream_api.quota.rates import RateMeter
from llm_stream_api.settings import APISettings

RATE_WINDOW_S = 30.0


class Backlog(Protocol):
    """The waiting tasks, as the queue log counts them (``broker.queue_positions``)."""

    @property
    def waiting(self) -> int: ...

    def drain_rate(self) -> float: ...


class StreamCount:
    """Streams open in this process, and how fast they close (one per app, on its state)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.open = 0
        self._clock = clock
        self._closed = RateMeter(RATE_WINDOW_S)

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1
        self._closed.record(self._clock())

    def close_rate(self) -> float:
        """Streams closed per second (``quota.rates.RateMeter``, over ``RATE_WINDOW_S``)."""
        return self._closed.rate(self._clock())


def retry_after(excess: int, rate: float, ceiling: int) -> int:
    """Seconds until ``excess`` items have drained at ``rate`` per second, within [1, ceiling].
    Nothing drains (rate 0, e.g. no worker): the ceiling."""
    if rate <= 0:
        return ceiling
    return max(1, min(ceiling, math.ceil(excess / rate)))


def check_queue(settings: APISettings, queue: Backlog) -> None:
    """Refuse a new task while the queue holds ``MAX_QUEUED_TASKS`` waiting tasks."""
    waiting = queue.waiting
    if waiting >= settings.max_queued_tasks:
        raise queue_full(settings, queue, waiting)


NACK_MARGIN = 100  # tasks the keeper's count may lag behind the broker's during a burst


def near_bound(settings: APISettings, queue: Backlog) -> bool:
    """Whether a publish the broker refused can be the queue's bound: the keeper's count (a
    watermark old, so behind in a burst) is within a margin of ``MAX_QUEUED_TASKS``. Far from
    it, the refusal is a queue without a leader, not a full one."""
    margin = max(NACK_MARGIN, settings.max_queued_tasks // 2)
    return queue.waiting + margin >= settings.max_queued_tasks


def queue_full(settings: APISettings, queue: Backlog, waiting: int | None = None) -> Overloaded:
    """The 503 of a full queue (also when the broker itself refused the task)."""
    waiting = queue.waiting if waiting is None else waiting
    excess = max(1, waiting - settings.max_queued_tasks + 1)
    rate = queue.drain_rate()
    seconds = retry_after(excess, rate, settings.retry_after_max_s)
    return Overloaded(
        f"the queue is full ({settings.max_queued_tasks} tasks, MAX_QUEUED_TASKS; {waiting} waiting, "
        f"draining {rate:.2g}/s); try again in {seconds}s", seconds,
    )


def check_streams(settings: APISettings, streams: StreamCount) -> None:
    """Refuse a new stream while this process serves ``MAX_OPEN_STREAMS``."""
    if streams.open < settings.max_open_streams:
        return
    excess = streams.open - settings.max_open_streams + 1
    seconds = retry_after(excess, streams.close_rate(), settings.retry_after_max_s)
    raise Overloaded(
        f"this API process serves its most streams ({settings.max_open_streams}, MAX_OPEN_STREAMS); "
        f"try again in {seconds}s", seconds,
    )
